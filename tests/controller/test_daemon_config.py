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
