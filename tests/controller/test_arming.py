"""Restarting after a safe-state stop: the no-light hint, arming, and its refusals.

The emulated node's instruments start as a stop leaves them (pump laser off, SNSPD
bias 0): the daemon must say so when it calibrates, ``arm=True`` must ramp them back
to ``daemon.operating_state`` through the limits and calibrate, and arming must be
refused while an interlock is tripped.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest

from controller._daemon_config import ConfigError, load_daemon_config
from controller.daemon import Daemon
from controller.operating import ramp
from controller.simnode import make_sim_node

pytestmark = pytest.mark.slow


def _safe_state(tcfg: dict) -> None:
    """The bench as the last stop left it: laser off, bias at 0."""
    tcfg["initial"].update(laser_on=False, bias_current_a=0.0)


def _quick(raw: dict) -> None:
    raw["daemon"]["calibration"]["capture_s"] = 0.5
    raw["daemon"]["operating_state"]["ramp_step_s"] = 0.02
    raw["daemon"]["operating_state"]["settle_s"] = 0.2


async def _until(pred, timeout_s: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.1)


def _node(tmp_path: Path, daemon_changes=_quick):
    testbed, path = make_sim_node(
        tmp_path, testbed_changes=_safe_state, daemon_changes=daemon_changes
    )
    testbed.serve()
    return testbed, load_daemon_config(path), path


def test_calibration_without_light_names_the_cause_and_the_fix(tmp_path, caplog):
    testbed, cfg, path = _node(tmp_path)

    async def main() -> dict:
        d = Daemon(cfg)
        await d.start()
        try:
            await _until(lambda: d.calibration.get("state") in ("done", "failed"))
            return dict(d.calibration)
        finally:
            await d.shutdown()

    try:
        with caplog.at_level(logging.INFO, logger="qnet"):
            cal = asyncio.run(main())
    finally:
        testbed.stop()
    assert cal["state"] == "failed"
    why = cal["error"]
    assert "no light" in why and "0 (Alice H)" in why  # the dark channel, by name
    assert "pump_laser.laser_on is False" in why
    assert "snspd_bias.bias_current_a is 0.0" in why
    assert f"qnet run {path} --arm" in why  # the command that fixes it
    text = caplog.text
    assert re.search(r"started node sim-node from .*daemon\.yaml: devices .*pump_laser ready", text)
    assert "not armed" in text
    assert "calibration at start failed: no light" in text


def test_arm_ramps_to_the_operating_state_then_calibrates(tmp_path, caplog):
    testbed, cfg, _ = _node(tmp_path)
    smu = testbed.emulators["snspd_bias"]

    async def main() -> dict:
        d = Daemon(cfg, arm=True)
        await d.start()
        try:
            await _until(lambda: d.calibration.get("state") in ("done", "failed"))
            return {"cal": dict(d.calibration), "arming": dict(d.arming)}
        finally:
            await d.shutdown()

    try:
        with caplog.at_level(logging.INFO, logger="qnet"):
            out = asyncio.run(main())
    finally:
        testbed.stop()
    assert out["arming"]["state"] == "armed", out
    assert out["cal"]["state"] == "done", out
    # the bias went up in 5 steps (none above the target), before the laser came on
    sets = [c for c in smu.commands if c.upper().startswith(":SOUR:CURR ")]
    values = [float(c.split()[1]) for c in sets]
    up = [v for v in values if v > 0]
    assert len(up) >= 5 and up[:5] == sorted(up[:5]) and max(up) == pytest.approx(16e-6)
    assert "armed: snspd_bias.bias_current_a = 1.6e-05 from 0 in 5 steps" in caplog.text
    assert "calibration done: delays channel 0: 0 ps (reference); channel 1:" in caplog.text


def test_arming_is_refused_while_an_interlock_is_tripped(tmp_path, caplog):
    def tec_out_of_range(raw: dict) -> None:
        _quick(raw)
        raw["daemon"]["interlocks"]["laser_tec"].update(min=40.0, max=50.0)  # reads ~25 C

    testbed, cfg, _ = _node(tmp_path, tec_out_of_range)
    laser = testbed.emulators["pump_laser"]

    async def main() -> dict:
        d = Daemon(cfg, arm=True)
        await d.start()
        try:
            await _until(lambda: d.arming.get("state") not in ("requested", "running"))
            await asyncio.sleep(0.5)
            return dict(d.arming)
        finally:
            await d.shutdown()

    try:
        with caplog.at_level(logging.INFO, logger="qnet"):
            arming = asyncio.run(main())
    finally:
        testbed.stop()
    assert arming["state"] == "refused"
    assert "interlock laser_tec tripped" in arming["error"]
    assert not laser.output_on  # nothing was switched on
    assert "interlock laser_tec TRIPPED" in caplog.text
    assert "actions: pump_laser.laser_on = false" in caplog.text


def test_an_operating_state_outside_the_limits_is_refused_at_load(tmp_path):
    def too_much(raw: dict) -> None:
        raw["daemon"]["operating_state"]["setpoints"][0]["value"] = 5e-4  # limit 25 uA

    _, path = make_sim_node(tmp_path, daemon_changes=too_much)
    with pytest.raises(ConfigError, match=r"daemon\.operating_state\.setpoints\.0"):
        load_daemon_config(path)


def test_ramp_ends_exactly_on_the_target():
    assert ramp(0.0, 1.0, 4) == [0.25, 0.5, 0.75, 1.0]
    assert ramp(2.0, 1.0, 1) == [1.0]
