import itertools
import json
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from controller.cli import app
from controller.simnode import free_port

runner = CliRunner()
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SIM = str(CONFIGS / "sim-daemon.yaml")


@pytest.mark.parametrize("cmd", ["run", "status", "get", "set", "calibrate"])
def test_help(cmd):
    r = runner.invoke(app, [cmd, "--help"])
    assert r.exit_code == 0
    assert "Usage" in r.output


def test_run_check_valid_and_invalid(tmp_path):
    r = runner.invoke(app, ["run", "--check", SIM])
    assert r.exit_code == 0, r.output
    assert "sim-node" in r.output
    bad = yaml.safe_load(Path(SIM).read_text())
    bad["daemon"]["acquisition"]["window_s"] = "soon"
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    (tmp_path / "sim-node.yaml").write_text((CONFIGS / "sim-node.yaml").read_text())
    r = runner.invoke(app, ["run", str(p)])
    assert r.exit_code == 2
    assert "daemon.acquisition.window_s" in r.output and str(p) in r.output


def test_unreachable_daemon_exits_1():
    port = free_port()  # nothing listens there
    for args in (
        ["get", SIM, "pump_laser", "laser_on"],
        ["set", SIM, "pump_laser", "laser_on", "false"],
        ["calibrate", SIM],
        ["status", SIM, "--once"],
    ):
        r = runner.invoke(app, [*args, "--broker", f"127.0.0.1:{port}", "--timeout", "2"])
        assert r.exit_code == 1, (args, r.output)
        assert "unreachable" in r.output or "no reply" in r.output


def test_bad_usage_exits_2():
    r = runner.invoke(app, ["set", SIM, "pump_laser", "laser_on", "maybe"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["get", SIM, "pump_laser", "laser_on", "--broker", "nohostport"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["get", "does-not-exist.yaml", "pump_laser", "laser_on"])
    assert r.exit_code == 2


def test_host_port_parsing_is_shared_by_every_broker_option():
    from controller._cli_options import parse_host_port

    assert parse_host_port("broker.lab:1884") == ("broker.lab", 1884)
    assert parse_host_port("::1:1883") == ("::1", 1883)
    for bad in ("nohostport", ":1883", "host:", "host:x1", "host:0", "host:70000"):
        with pytest.raises(typer.BadParameter, match="HOST:PORT"):
            parse_host_port(bad)
    for args in (["run", "--check", SIM], ["status", SIM, "--once"], ["demo"]):
        r = runner.invoke(app, [*args, "--broker", "host:70000"])
        assert r.exit_code == 2 and "HOST:PORT" in r.output, (args, r.output)


def test_run_broker_override_keeps_the_configs_broker_settings(tmp_path, monkeypatch):
    import controller.daemon as daemon_mod

    seen = {}

    class FakeDaemon:  # stands in for the daemon only: records the broker it was given
        def __init__(self, cfg, broker=None, arm=False):
            seen["broker"] = broker
            raise ValueError("stop here")

    monkeypatch.setattr(daemon_mod, "Daemon", FakeDaemon)
    r = runner.invoke(app, ["run", SIM, "--broker", "broker.lab:1884"])
    assert r.exit_code == 2, r.output
    b = seen["broker"]
    assert (b.host, b.port, b.client_id) == ("broker.lab", 1884, "qnet-sim-node")
    raw = yaml.safe_load(Path(SIM).read_text())
    del raw["daemon"]["telemetry"]["broker"]
    raw["node_config"] = str(CONFIGS / "sim-node.yaml")
    p = tmp_path / "nobroker.yaml"
    p.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["run", str(p), "--broker", "broker.lab:1884"])
    assert r.exit_code == 2, r.output
    b = seen["broker"]
    assert (b.host, b.port, b.client_id, b.tls) == ("broker.lab", 1884, "qnet-sim-node", None)


def test_token_from_the_environment(monkeypatch):
    from controller._cli_options import auth_fields

    monkeypatch.setenv("QNET_TEST_TOKEN", "s3cret")
    assert auth_fields("alice", "QNET_TEST_TOKEN") == {"user": "alice", "token": "s3cret"}
    assert auth_fields(None, None) == {}
    # every command that sends a request names a missing token variable and exits 2
    monkeypatch.delenv("QNET_TEST_TOKEN")
    for args in (
        ["get", SIM, "pump_laser", "laser_on"],
        ["set", SIM, "pump_laser", "laser_on", "false"],
        ["calibrate", SIM],
        ["status", SIM, "--once"],
        ["status", SIM],
    ):
        r = runner.invoke(app, [*args, "--user", "alice", "--token-env", "QNET_TEST_TOKEN"])
        assert r.exit_code == 2, (args, r.output)
        assert "QNET_TEST_TOKEN" in r.output, (args, r.output)


def test_devices_follows_the_node_config_of_a_daemon_config(tmp_path):
    port = free_port()  # nothing listens there: the instruments are unreachable (exit 1)
    node = {
        "node": "lab-node",
        "instruments": {
            "pump_laser": {
                "driver": "thorlabs_cld1015",
                "resource": f"TCPIP::127.0.0.1::{port}::SOCKET",
                "timeout_s": 0.5,
            }
        },
    }
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(node))
    daemon = {
        "node_config": "node.yaml",
        "instruments": {
            "power_meter": {
                "driver": "thorlabs_pm100",
                "resource": f"TCPIP::127.0.0.1::{port}::SOCKET",
                "timeout_s": 0.5,
            }
        },
        "daemon": {"link": "l"},
    }
    p = tmp_path / "daemon.yaml"
    p.write_text(yaml.safe_dump(daemon))
    r = runner.invoke(app, ["devices", str(p), "--json"])
    assert r.exit_code == 1, r.output
    out = json.loads(r.stdout)
    assert out["node"] == "lab-node"
    assert [row["name"] for row in out["instruments"]] == ["pump_laser", "power_meter"]


def test_remote_commands_keep_the_configs_tls_and_keepalive(tmp_path, monkeypatch):
    from controller._remote import broker_from

    raw = yaml.safe_load(Path(SIM).read_text())
    raw["node_config"] = str(CONFIGS / "sim-node.yaml")
    raw["daemon"]["telemetry"]["broker"].update(
        port=8883,
        keepalive_s=17,
        tls={"ca_file": str(tmp_path / "ca.crt")},
        username="daemon",
        password={"env": "QNET_DAEMON_PW"},
    )
    p = tmp_path / "tls.yaml"
    p.write_text(yaml.safe_dump(raw))
    node, b = broker_from(p, None, None, None)
    assert node == "sim-node"
    assert (b.host, b.port, b.keepalive_s) == ("127.0.0.1", 8883, 17)
    assert b.tls is not None and b.tls.ca_file == tmp_path / "ca.crt"
    # the operator's own credentials, never the daemon's; a fresh client id
    assert b.username is None and b.password is None
    assert b.client_id != "qnet-sim-node"
    monkeypatch.setenv("QNET_OP_PW", "x")
    _, b = broker_from(p, "broker.lab:1884", "op", "QNET_OP_PW")
    assert (b.host, b.port, b.username) == ("broker.lab", 1884, "op")
    assert b.tls is not None and b.keepalive_s == 17
    # a TLS file that cannot be read: exit 1 naming the setting, not a traceback
    r = runner.invoke(app, ["get", str(p), "pump_laser", "laser_on", "--timeout", "2"])
    assert r.exit_code == 1, r.output
    assert "daemon.telemetry.broker.tls" in r.output and "ca.crt" in r.output, r.output
    # an unset --mqtt-password-env is bad usage (exit 2) naming the variable
    r = runner.invoke(app, ["get", SIM, "pump_laser", "laser_on", "--mqtt-password-env", "NOPE_X"])
    assert r.exit_code == 2 and "NOPE_X" in r.output, r.output


# -- one error style, plain help, --check lists the limits ------------------------------------

ERROR_LINE = r"^qnet( [a-z]+)?: error: \S.*$"


def _errors(r):
    """The stderr lines of a result; each must be in the one qnet error style."""
    import re

    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines, r.output
    for ln in lines:
        assert re.match(ERROR_LINE, ln), ln
    assert "Traceback" not in r.output
    return lines


def _sim_copy(tmp_path, node_change=lambda t: t, daemon_change=lambda t: t):
    (tmp_path / "sim-node.yaml").write_text(node_change((CONFIGS / "sim-node.yaml").read_text()))
    p = tmp_path / "d.yaml"
    p.write_text(daemon_change(Path(SIM).read_text()))
    return p


def test_every_command_reports_bad_input_in_one_style(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("node: a\ninstruments: {x: [1,\n")
    missing = str(tmp_path / "missing.yaml")
    cases = [
        (["run", "--check", str(bad_yaml)], "qnet run: error: not valid YAML", f"({bad_yaml}:"),
        (["devices", str(bad_yaml)], "qnet devices: error: not valid YAML", f"({bad_yaml}:"),
        (["sim", missing], "qnet sim: error:", "missing.yaml"),
        (["bridge", missing], "qnet bridge: error:", "missing.yaml"),
        (["set", SIM, "pump_laser"], "qnet set: error:", "--help"),
        (["status", SIM, "--broker", "nohost"], "qnet status: error:", "HOST:PORT"),
        (["status", SIM, "--interval", "soon"], "qnet status: error:", "--interval"),
        (["bogus"], "qnet: error: No such command 'bogus'", "qnet --help"),
        (["run", "--log-level", "LOUD", SIM], "qnet run: error: unknown log level", "LOUD"),
    ]
    for args, head, where in cases:
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        lines = _errors(r)
        assert lines[0].startswith(head) and where in lines[0], (args, lines)


def test_run_check_names_limits_above_the_hardware(tmp_path):
    p = _sim_copy(
        tmp_path,
        node_change=lambda t: t.replace(
            "current_setpoint_a: [0.0, 0.1]", "current_setpoint_a: [0.0, 5.0]"
        ).replace("bias_current_a: [0.0, 25.0e-6]", "bias_current_a: [0.0, 1.0e-3]"),
    )
    r = CliRunner().invoke(app, ["run", "--check", str(p)])
    assert r.exit_code == 2, r.output
    laser, smu = _errors(r)
    assert "max 5 A is above the Thorlabs CLD1015 hardware maximum 1.5 A" in laser, laser
    assert "instruments.pump_laser.limits.current_setpoint_a)" in laser, laser
    assert "max 1 mA is above the Keithley 2400 hardware maximum 30 uA" in smu, smu


def test_run_check_lists_the_effective_limits_and_their_source():
    r = CliRunner().invoke(app, ["run", "--check", SIM])
    assert r.exit_code == 0, r.output
    rows = {tuple(ln.split()[:2]): ln.split() for ln in r.stdout.splitlines()[2:]}
    assert rows[("pump_laser", "current_setpoint_a")][2:] == ["0", "0.1", "A", "config"]
    # not configured: the ID120's documented conservative default, not its 1 V hardware range
    assert rows[("spad", "threshold_v")][2:] == ["0", "0.5", "V", "default"]
    assert all(len(ln) <= 80 for ln in r.stdout.splitlines())


def test_run_check_fails_on_a_missing_secret_file(tmp_path):
    missing = tmp_path / "op.token"
    p = _sim_copy(
        tmp_path,
        daemon_change=lambda t: t.replace(
            "    default_role: operator",
            f"    users: {{op: {{role: operator, token: {{file: {missing}}}}}}}\n"
            "    default_role: operator",
        ),
    )
    r = CliRunner().invoke(app, ["run", "--check", str(p)])
    assert r.exit_code == 2, r.output
    (line,) = _errors(r)
    assert str(missing) in line and "daemon.permissions.users.op.token.file" in line, line
    missing.write_text("t0ken\n")
    r = CliRunner().invoke(app, ["run", "--check", str(p)])
    assert r.exit_code == 0, r.output
    assert "t0ken" not in r.output


HELP_COMMANDS = ["run", "devices", "status", "bridge", "sim", "get", "set", "calibrate"]


@pytest.mark.parametrize(
    "cmd",
    [[], *([c] for c in [*HELP_COMMANDS, "analyze", "sample", "demo"])],
    ids=lambda c: " ".join(c) or "qnet",
)
def test_help_is_plain_text_that_fits_80_columns(cmd):
    r = CliRunner().invoke(app, [*cmd, "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    text = r.stdout
    for bad in ("``", ":class:", "<bool>", "<str>", "<float>", "{CONFIG}"):
        assert bad not in text, (bad, text)
    after_usage = text.split("\n", 1)[1]
    assert "..." not in after_usage, text  # a command's summary cut short
    lines = text.splitlines()
    assert all(len(ln) <= 80 for ln in lines), text
    # the description is filled: no line of a paragraph stops short (a broken wrap)
    body = text.split("\n\n")
    for para in body[1:]:
        if para.lstrip().startswith(("Arguments:", "Options:", "Commands:")):
            break
        rows = para.splitlines()
        for ln, nxt in itertools.pairwise(rows):
            assert len(ln) + 1 + len(nxt.split()[0]) > 80, (ln, nxt)
