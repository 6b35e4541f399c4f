"""The HIL config loader (hil_tests/_config.py): shapes, extends, errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config import ConfigError
from hil_tests._config import load_hil_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_default_config_references_node_and_testbed():
    cfg = load_hil_config(CONFIGS / "hil-sim.yaml")
    assert cfg.emulated and cfg.testbed_path == (CONFIGS / "testbed.yaml").resolve()
    assert "spad" in cfg.node.instruments
    assert cfg.hil.delay.fiber_delay_ps == 9793442
    assert cfg.hil.detectors.names()[4] == "bob_H"


def test_missing_spad_config_extends_the_default():
    cfg = load_hil_config(CONFIGS / "hil-missing-spad.yaml")
    assert "spad" not in cfg.node.instruments
    assert set(cfg.node.instruments) == {
        "pump_laser",
        "snspd_bias",
        "power_meter",
        "polarization_controller",
        "time_tagger",
    }
    base = load_hil_config(CONFIGS / "hil-sim.yaml")
    assert cfg.hil.sweep == base.hil.sweep and cfg.testbed_path == base.testbed_path


def test_errors_name_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(f"node_config: {CONFIGS / 'sim-node.yaml'}\nhil:\n  dark_count_max_hz: -1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: hil\.dark_count_max_hz"):
        load_hil_config(p)
    p.write_text(f"node_config: {CONFIGS / 'sim-node.yaml'}\n")
    with pytest.raises(ConfigError, match="no 'hil:' section"):
        load_hil_config(p)
    p.write_text(
        f"node_config: {CONFIGS / 'sim-node.yaml'}\n"
        "hil:\n  emulate: {disarm_detector_modules: [spad]}\n"
    )
    with pytest.raises(ConfigError, match="only valid with an emulated testbed"):
        load_hil_config(p)
    p.write_text("hil:\n  extends: bad.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_hil_config(p)
