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
    assert f"{p}: node: " in msg and "letters, digits, '_' or '-'" in msg, msg


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
