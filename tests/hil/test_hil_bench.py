"""The HIL bench (hil_tests/_bench.py) against the in-process testbed: safe-state restore."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil_tests._bench import Bench
from hil_tests._config import load_hil_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def bench():
    b = Bench(load_hil_config(CONFIGS / "hil-sim.yaml"))
    try:
        b.start()
        yield b
    finally:
        b.close()


def test_restore_safe_state_after_changes(bench):
    assert not bench.open_errors
    laser = bench.instruments["pump_laser"]
    smu = bench.instruments["snspd_bias"]
    pc = bench.instruments["polarization_controller"]
    spad = bench.instruments["spad"]
    before = (smu.bias_current_a, pc.setpoints, spad.bias_v, laser.current_setpoint_a)
    laser.current_setpoint_a = 0.07
    laser.laser_on = True
    smu.bias_current_a = 22e-6  # above the switching current: latches
    assert smu.latched()
    pc.setpoints = [1.0, 2.0, 3.0, 4.0]
    spad.bias_v = 110.0
    assert bench.restore_safe_state() == []
    assert laser.laser_on is False
    assert not smu.latched()
    after = (smu.bias_current_a, pc.setpoints, spad.bias_v, laser.current_setpoint_a)
    assert after[0] == pytest.approx(before[0])
    assert after[1] == pytest.approx(before[1], abs=1e-3)
    assert after[2:] == pytest.approx(before[2:])


def test_testbed_runs_on_free_ports_and_moves_the_node_config(bench):
    fixed = load_hil_config(CONFIGS / "hil-sim.yaml").node.instruments
    for name, ic in bench.node.instruments.items():
        assert ic.resource != fixed[name].resource, name
    batch = bench.acquire(0.02)
    assert batch.duration_ps >= 20_000_000_000
    assert bench.rates_hz(batch).shape == (8,)
