import re
from pathlib import Path

import pytest
import yaml

from controller._daemon_config import load_daemon_config
from controller.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


@pytest.mark.parametrize("name", ["sim-daemon.yaml", "alice.yaml", "bob.yaml"])
def test_shipped_configs_are_valid(name):
    cfg = load_daemon_config(CONFIGS / name)
    assert cfg.node
    assert cfg.daemon.interlocks
    if cfg.daemon.acquisition is not None:
        assert cfg.daemon.acquisition.role_map().bases
    # the daemon builds every (unopened) driver, surface and monitor from it
    from controller.daemon import Daemon

    d = Daemon(cfg)
    assert set(d.surfaces) == set(cfg.instruments)
    for w in d.workers.values():
        assert w.state == "disconnected"
        w.executor.shutdown()


def test_sim_daemon_takes_instruments_from_node_config():
    cfg = load_daemon_config(CONFIGS / "sim-daemon.yaml")
    assert {"pump_laser", "time_tagger", "bob_tagger"} <= set(cfg.instruments)
    assert cfg.node == "sim-node"


def _at(p, expect):
    """A regex for ``file:line: expect`` (every problem names the file and the line)."""
    return re.escape(str(p)) + r":\d+: " + re.escape(expect)


def _write(tmp_path, data, name="d.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def _base():
    data = yaml.safe_load((CONFIGS / "sim-daemon.yaml").read_text())
    node = yaml.safe_load((CONFIGS / "sim-node.yaml").read_text())
    data.pop("node_config")
    data["node"] = node["node"]
    data["instruments"] = {**node["instruments"], **data["instruments"]}
    return data


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (lambda d: d["daemon"]["acquisition"].update(window_s=-1), "daemon.acquisition.window_s"),
        (
            lambda d: d["daemon"]["interlocks"]["qber"].update(clear_below=0.5),
            "daemon.interlocks.qber",
        ),
        (
            lambda d: d["daemon"]["interlocks"]["count_rate"]["actions"][0].update(device="laser9"),
            "no instrument 'laser9'",
        ),
        (lambda d: d["daemon"]["acquisition"]["roles"]["bob"].update(H=12), "n_channels"),
        (lambda d: d["daemon"].update(bogus=1), "daemon.bogus"),
        (lambda d: d["instruments"]["pump_laser"].update(driver="nope"), "instruments.pump_laser"),
        (lambda d: d["daemon"]["compensation"].update(device="spad9"), "compensation.device"),
    ],
)
def test_errors_name_file_and_key_path(tmp_path, change, expect):
    data = _base()
    change(data)
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_daemon_config(p)
    msg = str(info.value)
    assert str(p) in msg
    assert expect in msg


def test_unreadable_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_daemon_config(tmp_path / "missing.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_daemon_config(p)
    p.write_text("a: [\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_daemon_config(p)


def test_node_config_reference_errors_name_that_file(tmp_path):
    (tmp_path / "node.yaml").write_text(
        yaml.safe_dump({"node": "n", "instruments": {"x": {"driver": "nope", "resource": "r"}}})
    )
    data = _base()
    data.pop("node")
    data["node_config"] = "node.yaml"
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_daemon_config(p)
    assert "node.yaml" in str(info.value)


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (lambda d: d["daemon"]["compensation"].update(elements=[]), "daemon.compensation.elements"),
        (
            lambda d: d["daemon"]["compensation"].update(elements=[0, -1]),
            "daemon.compensation.elements.1",
        ),
        (
            lambda d: d["daemon"]["compensation"].update(elements=[0, 4]),
            "daemon.compensation.elements: index 4 is outside 0..3",
        ),
        (
            lambda d: d["daemon"]["compensation"].update(device="pump_laser"),
            "'pump_laser' (Thorlabs CLD1015) has no element settings",
        ),
        (
            lambda d: d["daemon"]["compensation"].update(device="daemon"),
            "daemon.compensation.device: 'daemon' is not an instrument",
        ),
    ],
)
def test_compensation_needs_elements_to_move(tmp_path, change, expect):
    data = _base()
    change(data)
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_daemon_config(p)
    assert str(p) in str(info.value) and expect in str(info.value), str(info.value)


@pytest.mark.parametrize("name", ["bob.lab", "a/b", "a+", "a#", "with space", "x" * 65, ""])
def test_node_name_must_be_a_topic_level(tmp_path, name):
    data = _base()
    data["node"] = name
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_daemon_config(p)
    msg = str(info.value)
    assert re.search(_at(p, "node: "), msg) and "letters, digits, '_' or '-'" in msg, msg


def test_max_lines_per_message_has_the_publishers_bounds(tmp_path):
    from telemetry import PublisherSettings

    data = _base()
    data["daemon"]["telemetry"]["max_lines_per_message"] = 100_001
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError, match=r"daemon\.telemetry\.max_lines_per_message"):
        load_daemon_config(p)
    data["daemon"]["telemetry"]["max_lines_per_message"] = 100_000
    cfg = load_daemon_config(_write(tmp_path, data))
    t = cfg.daemon.telemetry
    # what --check accepts, the publisher built in Daemon.start accepts too
    PublisherSettings(
        node=cfg.node,
        broker=t.broker,
        outbox={"path": tmp_path / "o.db"},
        max_lines_per_message=t.max_lines_per_message,
    )


def test_errors_never_print_a_secret(tmp_path):
    data = _base()
    data["daemon"]["telemetry"]["broker"]["password"] = "s3cr3t-broker"
    data["daemon"]["permissions"]["users"] = {
        "op": {"role": "operator", "token": "s3cr3t-token"},
        "viewer": {"token": {"env": "QNET_T", "value": "s3cr3t-nested"}},
    }
    # an error about the whole instrument, whose input holds a secret-looking option
    data["instruments"]["pump_laser"]["options"] = {"password": "s3cr3t-option"}
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_daemon_config(p)
    msg = str(info.value)
    for where in (
        "daemon.telemetry.broker.password",
        "daemon.permissions.users.op.token",
        "daemon.permissions.users.viewer.token.value",
        "instruments.pump_laser",
    ):
        assert where in msg, msg
    assert "s3cr3t" not in msg, msg
    # other values are still shown
    data = _base()
    data["daemon"]["acquisition"]["window_s"] = "soon"
    with pytest.raises(ConfigError, match="got 'soon'"):
        load_daemon_config(_write(tmp_path, data))


# -- references checked against the instruments' command surfaces (what --check catches) --


def _drop_acquisition(d):
    for key in ("acquisition", "compensation"):
        d["daemon"].pop(key)


def _no_compensation(d):
    d["daemon"].pop("compensation")


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (  # a misspelt safe-state setting: it would only fail at shutdown
            lambda d: d["daemon"]["safe_state"][0].update(setting="laser_onn"),
            "daemon.safe_state.0: pump_laser has no setting 'laser_onn'",
        ),
        (  # a safe state out of the safe range
            lambda d: d["daemon"]["safe_state"][1].update(value=1.0e-3),
            "daemon.safe_state.1: snspd_bias.bias_current_a = 0.001 is outside the safe range",
        ),
        (
            lambda d: d["daemon"]["safe_state"].append({"device": "daemon", "action": "pause_key"}),
            "daemon.safe_state.2.device: the safe state sets instruments, not the daemon",
        ),
        (  # a misspelt reading: the rule would never fire
            lambda d: d["daemon"]["interlocks"]["snspd_latch"].update(reading="snspd_bias.latchd"),
            "daemon.interlocks.snspd_latch.reading: 'snspd_bias.latchd' is not a reading the "
            "daemon provides",
        ),
        (  # a real reading that nobody polls: never fires either
            lambda d: d["daemon"]["monitor"].pop("snspd_bias"),
            "daemon.interlocks.snspd_latch.reading: 'snspd_bias.latched' is not polled: add "
            "'latched' to daemon.monitor.snspd_bias",
        ),
        (
            _drop_acquisition,
            "daemon.interlocks.qber.reading: 'qber' is a window reading, but there is no "
            "daemon.acquisition",
        ),
        (  # passed --check, then `qnet run` failed without naming the file
            lambda d: d["daemon"]["monitor"]["snspd_bias"].append("latchd"),
            "daemon.monitor.snspd_bias.2: 'latchd' is not a reading of snspd_bias (Keithley 2400",
        ),
        (
            lambda d: d["daemon"]["monitor"].update(laser9=["x"]),
            "daemon.monitor.laser9: no instrument",
        ),
        (  # out of range in an interlock action: only found when it tripped
            lambda d: d["daemon"]["interlocks"]["count_rate"]["actions"].append(
                {"device": "pump_laser", "setting": "current_setpoint_a", "value": 0.5}
            ),
            "daemon.interlocks.count_rate.actions.1: pump_laser.current_setpoint_a = 0.5 is "
            "outside the safe range [0, 0.1] (out_of_limits)",
        ),
        (
            lambda d: d["daemon"]["interlocks"]["laser_tec"]["actions"][0].update(value="off"),
            "daemon.interlocks.laser_tec.actions.0: pump_laser.laser_on takes true or false",
        ),
        (  # on_clear entries are numbered under on_clear (not after the actions)
            lambda d: d["daemon"]["interlocks"]["qber"]["on_clear"][0].update(action="resume"),
            "daemon.interlocks.qber.on_clear.0: the daemon's actions are",
        ),
        (
            lambda d: d["daemon"]["interlocks"]["qber"]["on_clear"].append(
                {"device": "snspd_bias", "action": "reset_latchh"}
            ),
            "daemon.interlocks.qber.on_clear.1: snspd_bias has no action 'reset_latchh'",
        ),
        (
            _no_compensation,
            "daemon.interlocks.qber.actions.1: daemon action 'compensate' needs "
            "daemon.compensation",
        ),
        (
            lambda d: d["daemon"]["acquisition"]["source"]["taggers"][0].update(
                device="pump_laser"
            ),
            "daemon.acquisition.source.taggers.0.device: 'pump_laser' (Thorlabs CLD1015) is not "
            "a time tagger",
        ),
    ],
)
def test_references_are_checked_against_the_device_surfaces(tmp_path, change, expect):
    data = _base()
    change(data)
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_daemon_config(p)
    assert re.search(_at(p, expect), str(info.value)), str(info.value)


def test_every_problem_is_one_line_naming_the_file(tmp_path):
    data = _base()
    d = data["daemon"]
    d["safe_state"][0]["setting"] = "laser_onn"
    d["monitor"]["snspd_bias"] = ["latchd"]  # and so snspd_latch's reading is not polled
    d["interlocks"]["qber"]["on_clear"][0]["action"] = "resume"
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_daemon_config(p)
    lines = str(info.value).splitlines()
    assert len(lines) == 4, lines
    assert all(re.match(_at(p, "daemon."), line) for line in lines), lines
    assert not any("actions.3" in line for line in lines), lines


def test_run_check_names_the_file_of_a_monitor_typo(tmp_path):
    from typer.testing import CliRunner

    from controller.cli import app

    data = _base()
    data["daemon"]["monitor"]["pump_laser"] = ["tec_temperature"]
    p = _write(tmp_path, data)
    r = CliRunner().invoke(app, ["run", "--check", str(p)])
    assert r.exit_code == 2, r.output
    assert "'tec_temperature' is not a reading" in r.output
    assert re.search(re.escape(str(p)) + r":\d+: daemon\.monitor\.pump_laser\.0", r.output)


@pytest.mark.parametrize("name", ["sim-daemon.yaml", "alice.yaml", "bob.yaml"])
def test_checked_surfaces_are_the_ones_the_instruments_enforce(name):
    from controller._daemon_config import instrument_surface
    from controller.commands import surface_for
    from drivers import DRIVERS

    cfg = load_daemon_config(CONFIGS / name)
    assert cfg.problems() == []
    for dev, ic in cfg.instruments.items():
        inst = ic.build(dev)  # unopened: its limits are the ones its setters check
        built = surface_for(dev, DRIVERS[ic.driver], inst.limits)
        assert instrument_surface(dev, ic).describe() == built.describe()


def test_daemon_refuses_a_config_that_skipped_the_loader(tmp_path):
    from controller._daemon_config import DaemonConfig
    from controller.daemon import Daemon

    data = _base()
    data["daemon"]["safe_state"][0]["setting"] = "laser_onn"
    cfg = DaemonConfig.model_validate(data)  # schema only
    with pytest.raises(ConfigError, match=r"daemon\.safe_state\.0: pump_laser has no setting"):
        Daemon(cfg)


# -- limits capped by the hardware, duplicate keys, messages that say where -------------------


def _node_yaml(tmp_path, text_change):
    """The shipped sim-node.yaml with one textual change, next to a daemon config using it."""
    node = (CONFIGS / "sim-node.yaml").read_text()
    changed = text_change(node)
    assert changed != node, "the change did not apply"
    (tmp_path / "sim-node.yaml").write_text(changed)
    daemon = tmp_path / "d.yaml"
    daemon.write_text((CONFIGS / "sim-daemon.yaml").read_text())
    return daemon


@pytest.mark.parametrize(
    ("old", "new", "key", "value", "bound"),
    [
        (
            "current_setpoint_a: [0.0, 0.1]",
            "current_setpoint_a: [0.0, 5.0]",
            "instruments.pump_laser.limits.current_setpoint_a",
            "max 5 A",
            "Thorlabs CLD1015 hardware maximum 1.5 A",
        ),
        (
            "bias_current_a: [0.0, 25.0e-6]",
            "bias_current_a: [0.0, 1.0e-3]",
            "instruments.snspd_bias.limits.bias_current_a",
            "max 1 mA",
            "Keithley 2400 hardware maximum 30 uA",
        ),
    ],
)
def test_limits_beyond_the_hardware_are_refused_at_load(tmp_path, old, new, key, value, bound):
    p = _node_yaml(tmp_path, lambda t: t.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_daemon_config(p)
    (problem,) = info.value.problems
    assert problem.key == key and value in problem.what and bound in problem.what, problem
    assert problem.file.endswith("sim-node.yaml") and problem.line is not None, problem


@pytest.mark.parametrize(
    ("where", "old", "new", "key"),
    [
        # a second current_setpoint_a widened the laser limit from 0.1 to 1.5 A
        (
            "node",
            "      current_setpoint_a: [0.0, 0.1]\n",
            "      current_setpoint_a: [0.0, 0.1]\n      current_setpoint_a: [0.0, 1.5]\n",
            "instruments.pump_laser.limits.current_setpoint_a",
        ),
        # a second default_role made every user an admin
        (
            "daemon",
            "    default_role: operator",
            "    default_role: viewer\n    default_role: admin",
            "daemon.permissions.default_role",
        ),
    ],
)
def test_duplicate_keys_are_an_error_naming_file_line_and_key(tmp_path, where, old, new, key):
    if where == "node":
        p = _node_yaml(tmp_path, lambda t: t.replace(old, new))
        bad = tmp_path / "sim-node.yaml"
    else:
        (tmp_path / "sim-node.yaml").write_text((CONFIGS / "sim-node.yaml").read_text())
        text = (CONFIGS / "sim-daemon.yaml").read_text()
        assert old in text
        p = bad = tmp_path / "d.yaml"
        p.write_text(text.replace(old, new))
    second = new.splitlines()[1]
    line = 1 + next(k for k, t in enumerate(bad.read_text().splitlines()) if t.startswith(second))
    with pytest.raises(ConfigError) as info:
        load_daemon_config(p)
    msg = str(info.value)
    assert f"{bad}:{line}: duplicate key {key!r}" in msg, msg


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path):
    p = tmp_path / "d.yaml"
    p.write_text("node: a\ninstruments:\n  x: {driver: [1,\n")
    with pytest.raises(ConfigError) as info:
        load_daemon_config(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}:") and "<unicode string>" not in msg, msg
    assert info.value.problems[0].line is not None


def test_unknown_key_suggests_the_nearest_valid_one(tmp_path):
    data = _base()
    acq = data["daemon"]["acquisition"]
    acq["coincidence_windw_ps"] = acq.pop("coincidence_window_ps")
    data["instruments"]["pump_laser"]["limits"]["current_setpont_a"] = [0, 0.05]
    with pytest.raises(ConfigError) as info:
        load_daemon_config(_write(tmp_path, data))
    msg = str(info.value)
    assert "did you mean coincidence_window_ps?" in msg, msg
    assert "did you mean current_setpoint_a?" in msg, msg


def test_reversed_limits_name_the_key_and_both_values_only(tmp_path):
    data = _base()
    data["instruments"]["pump_laser"]["limits"]["tec_temperature_setpoint_c"] = [30.0, 20.0]
    with pytest.raises(ConfigError) as info:
        load_daemon_config(_write(tmp_path, data))
    (problem,) = info.value.problems
    assert problem.key == "instruments.pump_laser.limits.tec_temperature_setpoint_c"
    assert "min 30 degC is above max 20 degC" in problem.what, problem
    assert "resource" not in str(info.value) and "TCPIP" not in str(info.value)


def test_a_missing_referenced_file_names_the_key_that_referenced_it(tmp_path):
    p = tmp_path / "d.yaml"
    p.write_text((CONFIGS / "sim-daemon.yaml").read_text().replace("sim-node.yaml", "nope.yaml"))
    with pytest.raises(ConfigError) as info:
        load_daemon_config(p)
    (problem,) = info.value.problems
    assert problem.key == "node_config" and problem.line == 4 and "nope.yaml" in problem.what


def test_secret_files_are_checked_where_the_daemon_runs(tmp_path):
    data = _base()
    missing = tmp_path / "no-such.token"
    token = {"file": str(missing)}
    data["daemon"]["permissions"]["users"] = {"op": {"role": "operator", "token": token}}
    cfg = load_daemon_config(_write(tmp_path, data))
    assert cfg.file_problems() == [
        (
            "daemon.permissions.users.op.token.file",
            f"the secret file {str(missing)!r} does not exist",
        )
    ]
    missing.write_text("s3cr3t\n")
    assert cfg.file_problems() == []


@pytest.mark.parametrize(
    ("device", "setting", "value"),
    [
        ("snspd_bias", "bias_current_a", 5e-4),  # reached the emulated SMU before
        ("snspd_bias", "bias_current_a", 25e-6),  # above the 20 uA default
        ("pump_laser", "current_setpoint_a", 1.2),  # reached the emulated laser before
        ("spad", "threshold_v", 0.9),  # accepted by the wide default before
    ],
)
def test_set_commands_meet_the_default_when_no_limit_is_configured(device, setting, value):
    """``qnet set`` is checked against the same effective range the driver enforces."""
    from controller._daemon_config import instrument_surface
    from controller.commands import CommandError, PermissionsConfig, validate_request
    from controller.config import InstrumentConfig

    drivers = {"snspd_bias": "keithley_2400", "pump_laser": "thorlabs_cld1015", "spad": "idq_id120"}
    ic = InstrumentConfig(driver=drivers[device], resource="TCPIP::127.0.0.1::1::SOCKET")
    surfaces = {device: instrument_surface(device, ic)}
    body = {"id": "t", "device": device, "setting": setting, "value": value}
    with pytest.raises(CommandError) as info:
        validate_request(body, surfaces, PermissionsConfig(default_role="admin"))
    assert info.value.code == "out_of_limits", info.value
