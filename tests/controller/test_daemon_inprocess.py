"""The daemon in-process on the testbed's in-process tag source (no instruments, no broker)."""

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from controller._daemon_config import load_daemon_config
from controller.daemon import Daemon

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_testbed_source_calibrates_and_answers_requests(tmp_path):
    raw = {
        "node": "bench-node",
        "instruments": {},
        "daemon": {
            "acquisition": {
                "source": {
                    "kind": "testbed",
                    "config": str(CONFIGS / "testbed.yaml"),
                    "speed": 1.0,
                    "serve": False,
                },
                "window_s": 0.5,
                "roles": {
                    "alice": {"H": 0, "V": 1, "D": 2, "A": 3},
                    "bob": {"H": 4, "V": 5, "D": 6, "A": 7},
                },
            },
            "calibration": {"capture_s": 0.5},
            "interlocks": {
                "qber": {
                    "reading": "qber",
                    "trip_above": 0.2,
                    "actions": [{"device": "daemon", "action": "pause_key"}],
                }
            },
        },
    }
    p = tmp_path / "d.yaml"
    p.write_text(yaml.safe_dump(raw))
    cfg = load_daemon_config(p)

    async def main():
        d = Daemon(cfg)
        await d.start()
        try:
            for _ in range(100):
                await asyncio.sleep(0.2)
                if d.calibration.get("state") == "done" and d.history and d.history[-1]["qber"]:
                    break
            assert d.calibration["state"] == "done", d.calibration
            r = await d.wait_window(5.0)
            assert r.link_qber(100) < 0.05
            assert r.secure_rate_bps > 0
            reply = json.loads(
                await d.handle_payload('{"id": 9, "device": "daemon", "action": "status"}')
            )
            assert reply["ok"] and reply["result"]["node"] == "bench-node"
            reply = json.loads(
                await d.handle_payload('{"id": 10, "device": "laser", "setting": "x"}')
            )
            assert reply["error"]["code"] == "unknown_device"
            assert not d.key_paused
        finally:
            report = await d.shutdown()
        assert report["elapsed_s"] < 5

    asyncio.run(main())


# -- shutdown: nothing may undo the safe state, and it keeps to shutdown_timeout_s --


def _served(emulator):
    from drivers.sim.server import InstrumentServer

    return InstrumentServer(emulator).start()


def _instrument(driver, server, **kw):
    return {
        "driver": driver,
        "resource": f"TCPIP::127.0.0.1::{server.port}::SOCKET",
        "poll_interval_s": 0.05,
        **kw,
    }


def _load(tmp_path, raw):
    p = tmp_path / "d.yaml"
    p.write_text(yaml.safe_dump(raw))
    return load_daemon_config(p)


def test_shutdown_cannot_undo_the_safe_state(tmp_path):
    from drivers.sim.instruments import CLD1015Emulator

    temp = [35.0]  # the TEC is out of range: the interlock switches the laser off
    emu = CLD1015Emulator(read_tec_temperature_c=lambda sp, on: temp[0])
    emu.output_on = True
    srv = _served(emu)
    raw = {
        "node": "shutdown-node",
        "instruments": {"pump_laser": _instrument("thorlabs_cld1015", srv, timeout_s=0.3)},
        "daemon": {
            "acquisition": {
                "source": {
                    "kind": "testbed",
                    "config": str(CONFIGS / "testbed.yaml"),
                    "speed": 1.0,
                    "serve": False,
                },
                "window_s": 0.1,
                "roles": {
                    "alice": {"H": 0, "V": 1, "D": 2, "A": 3},
                    "bob": {"H": 4, "V": 5, "D": 6, "A": 7},
                },
            },
            "calibration": {"at_start": False},
            "monitor": {"pump_laser": ["tec_temperature_c"]},
            "interlocks": {
                "laser_tec": {
                    "reading": "pump_laser.tec_temperature_c",
                    "kind": "outside",
                    "min": 20.0,
                    "max": 30.0,
                    "actions": [{"device": "pump_laser", "setting": "laser_on", "value": False}],
                    # back in range: the laser comes back on (but never after the safe state)
                    "on_clear": [{"device": "pump_laser", "setting": "laser_on", "value": True}],
                }
            },
            "safe_state": [{"device": "pump_laser", "setting": "laser_on", "value": False}],
            "permissions": {"default_role": "operator"},
        },
    }
    cfg = _load(tmp_path, raw)
    seen = {}

    async def main():
        d = Daemon(cfg)
        op = d._device_op

        async def safe_state_then_more(vreq, force=False, quiet=False):
            result = await op(vreq, force=force, quiet=quiet)
            if force:  # the safe state is applied; the world goes on for a while
                temp[0] = 25.0  # a poll now would clear the interlock -> laser on
                windows, events = len(d.history), len(d.events)
                reply = await d.handle_payload(
                    '{"id": 7, "device": "pump_laser", "setting": "laser_on", "value": true}'
                )
                seen["reply"] = json.loads(reply)
                await asyncio.sleep(0.6)  # 12 poll intervals, 6 windows
                seen["windows"] = len(d.history) - windows
                seen["events"] = list(d.events)[events:]
            return result

        d._device_op = safe_state_then_more
        await d.start()
        try:
            assert await d.supervisor.wait_ready(5.0)
            for _ in range(100):
                await asyncio.sleep(0.05)
                if d.engine.active() == ["laser_tec"] and not emu.output_on and d.history:
                    break
            assert d.engine.active() == ["laser_tec"] and not emu.output_on
        finally:
            report = await d.shutdown()
        await asyncio.sleep(0.3)  # anything still on its way to the laser would land now
        return d, report

    try:
        d, report = asyncio.run(main())
    finally:
        srv.stop()
    assert report["safe_state"] == [
        {"device": "pump_laser", "setting": "laser_on", "value": False, "ok": True}
    ]
    assert emu.output_on is False  # the on_clear action never ran
    assert d.engine.active() == ["laser_tec"]  # not even evaluated
    assert seen["reply"]["error"]["code"] == "device_unavailable", seen["reply"]
    assert "shutting down" in seen["reply"]["error"]["message"]
    assert seen["windows"] == 0
    assert not [e for e in seen["events"] if e["kind"] in ("interlock", "action", "set")]
    assert report["elapsed_s"] < cfg.daemon.shutdown_timeout_s


def test_shutdown_keeps_to_its_timeout_with_a_hung_device(tmp_path):
    from drivers.sim.instruments import CLD1015Emulator, Keithley2400Emulator

    laser, smu = CLD1015Emulator(), Keithley2400Emulator()
    smu.output_on, smu.bias_current_a = True, 10e-6
    laser_srv, smu_srv = _served(laser), _served(smu)
    raw = {
        "node": "hung-node",
        "instruments": {
            # answers nothing at shutdown: every exchange waits its whole 2 s timeout
            "pump_laser": _instrument("thorlabs_cld1015", laser_srv, timeout_s=2.0),
            "snspd_bias": _instrument("keithley_2400", smu_srv, timeout_s=0.3),
        },
        "daemon": {
            "safe_state": [
                {"device": "pump_laser", "setting": "laser_on", "value": False},
                {"device": "snspd_bias", "setting": "bias_current_a", "value": 0.0},
            ],
            "shutdown_timeout_s": 1.0,
        },
    }
    cfg = _load(tmp_path, raw)

    async def main():
        d = Daemon(cfg)
        await d.start()
        ready = await d.supervisor.wait_ready(5.0)
        laser_srv.inject("timeout")
        report = await d.shutdown()
        assert ready
        return report

    try:
        report = asyncio.run(main())
    finally:
        laser_srv.stop()
        smu_srv.stop()
    first, second = report["safe_state"]
    assert not first["ok"] and "no answer in time" in first["error"], first
    assert second["ok"], second  # the hung laser did not starve the bias
    assert smu.bias_current_a == 0.0
    assert report["elapsed_s"] <= 1.0 + 0.1, report  # was 1.65 s: closing came on top


# -- reset_latch: its timeout follows the driver's ramp options --


def test_reset_latch_timeout_follows_the_ramp_options(tmp_path):
    from drivers.sim.instruments import Keithley2400Emulator

    smu = Keithley2400Emulator()
    srv = _served(smu)
    opts = {"reset_wait_s": 0.05, "reset_steps": 4, "ramp_step_s": 0.01}
    raw = {
        "node": "latch-node",
        "instruments": {
            "snspd_bias": _instrument("keithley_2400", srv, timeout_s=0.3, options=opts),
        },
        "daemon": {"permissions": {"default_role": "operator"}},
    }
    cfg = _load(tmp_path, raw)
    timeouts = []

    async def main():
        d = Daemon(cfg)
        w = d.workers["snspd_bias"]
        call = w.call

        async def spy(fn, timeout_s=None, **kw):
            timeouts.append(timeout_s)
            return await call(fn, timeout_s, **kw)

        w.call = spy
        await d.start()
        try:
            assert await d.supervisor.wait_ready(5.0)
            reply = await d.handle_payload(
                '{"id": 1, "device": "snspd_bias", "action": "reset_latch"}'
            )
            return d, json.loads(reply)
        finally:
            await d.shutdown()

    try:
        d, reply = asyncio.run(main())
    finally:
        srv.stop()
    assert reply["ok"], reply
    # call timeout 2 s + waits (0.05 + 4 x 0.01 s) + 2 x (4 + 2) exchanges of up to 0.3 s
    assert d._reset_latch_timeout_s("snspd_bias") == pytest.approx(2.0 + 0.09 + 3.6)
    assert d._reset_latch_timeout_s("snspd_bias") in timeouts
    # a slow ramp gets the time it needs (a fixed 30 s would fault the device mid-ramp)
    raw["instruments"]["snspd_bias"]["options"] = {"reset_steps": 100, "ramp_step_s": 0.5}
    slow = Daemon(_load(tmp_path, raw))
    assert slow._reset_latch_timeout_s("snspd_bias") > 0.05 + 100 * 0.5 + 2.0
    for w in slow.workers.values():
        w.executor.shutdown()
