"""Losing an instrument (its server dies) and getting it back at another set-point.

Reported: devices were marked faulted and reconnected, but no safe-state action ran on
loss, and a power-cycled laser back at 0.050 A instead of the commanded 0.055 A was not
noticed. The config now decides what happens (``daemon.on_loss``, ``<device>.lost``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
import yaml

from controller._daemon_config import load_daemon_config
from controller._device_loss import DeviceMemory, differences, same_value
from controller._logfilter import RepeatFilter
from controller.daemon import Daemon
from drivers.sim.instruments import CLD1015Emulator, Keithley2400Emulator
from drivers.sim.server import InstrumentServer


def _instrument(driver, server, **kw):
    return {
        "driver": driver,
        "resource": f"TCPIP::127.0.0.1::{server.port}::SOCKET",
        "poll_interval_s": 0.05,
        "timeout_s": 0.3,
        **kw,
    }


def _config(tmp_path, laser_srv, smu_srv, on_reconnect):
    raw = {
        "node": "loss-node",
        "instruments": {
            "pump_laser": _instrument(
                "thorlabs_cld1015",
                laser_srv,
                limits={"current_setpoint_a": [0.0, 0.1], "tec_temperature_setpoint_c": [20, 30]},
            ),
            "snspd_bias": _instrument(
                "keithley_2400",
                smu_srv,
                limits={"bias_current_a": [0.0, 2e-5], "compliance_v": [0.0, 2.0]},
            ),
        },
        "daemon": {
            "interlocks": {
                "laser_lost": {
                    "reading": "pump_laser.lost",
                    "kind": "flag",
                    "device": "pump_laser",
                }
            },
            "on_loss": {
                "pump_laser": {
                    # the detector depends on the pump: its bias goes off when the pump is lost
                    "actions": [{"device": "snspd_bias", "setting": "output_on", "value": False}],
                    "on_reconnect": on_reconnect,
                }
            },
            "permissions": {"default_role": "operator"},
        },
    }
    p = tmp_path / "d.yaml"
    p.write_text(yaml.safe_dump(raw))
    return load_daemon_config(p)


async def _until(cond, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.05)
    return bool(cond())


async def _ask(d, body):
    return json.loads(await d.handle_payload(json.dumps({"id": 1, **body})))


def _run(tmp_path, on_reconnect, scenario):
    laser = CLD1015Emulator()
    smu = Keithley2400Emulator()
    laser_srv = InstrumentServer(laser).start()
    smu_srv = InstrumentServer(smu).start()
    cfg = _config(tmp_path, laser_srv, smu_srv, on_reconnect)

    async def main():
        d = Daemon(cfg)
        await d.start()
        try:
            assert await d.supervisor.wait_ready(10)
            r = await _ask(
                d, {"device": "pump_laser", "setting": "current_setpoint_a", "value": 0.055}
            )
            assert r["ok"], r
            r = await _ask(d, {"device": "snspd_bias", "setting": "output_on", "value": True})
            assert r["ok"], r
            assert smu.output_on and laser.current_setpoint_a == pytest.approx(0.055)
            laser_srv.inject("disconnect")  # the instrument server dies
            assert await _until(lambda: not smu.output_on), "no on-loss action ran"
            assert d.engine.active() == ["laser_lost"]
            laser.current_setpoint_a = 0.050  # power-cycled: back at another set-point
            laser_srv.restore()
            assert await _until(lambda: d.workers["pump_laser"].state == "ready")
            assert await _until(lambda: any(e["kind"] == "mismatch" for e in d.events))
            assert await _until(lambda: d.engine.active() == [])
            return await scenario(d, laser)
        finally:
            await d.shutdown()

    try:
        return asyncio.run(main())
    finally:
        laser_srv.stop()
        smu_srv.stop()


def test_loss_runs_the_configured_actions_and_a_changed_setpoint_is_reported(tmp_path):
    async def scenario(d, laser):
        events = [e for e in d.events if e["kind"] in ("interlock", "mismatch", "action")]
        await asyncio.sleep(0.3)
        return events, laser.current_setpoint_a

    events, setpoint = _run(tmp_path, "report", scenario)
    texts = [e["text"] for e in events]
    assert any("laser_lost trip" in t for t in texts) and any(
        "laser_lost clear" in t for t in texts
    )
    assert any("pump_laser lost" in t and "snspd_bias" in t for t in texts), texts
    (mismatch,) = [t for t in texts if "pump_laser.current_setpoint_a" in t]
    assert "is 0.05" in mismatch and "commanded 0.055" in mismatch
    assert setpoint == pytest.approx(0.050)  # report only: left as found


def test_restore_sets_the_commanded_setpoint_again(tmp_path):
    async def scenario(d, laser):
        await _until(lambda: laser.current_setpoint_a == pytest.approx(0.055))
        return laser.current_setpoint_a

    assert _run(tmp_path, "restore", scenario) == pytest.approx(0.055)


def test_refuse_holds_changes_until_the_operator_sets_the_differing_setting(tmp_path):
    async def scenario(d, laser):
        refused = await _ask(d, {"device": "pump_laser", "setting": "laser_on", "value": True})
        confirm = await _ask(
            d, {"device": "pump_laser", "setting": "current_setpoint_a", "value": 0.05}
        )
        after = await _ask(d, {"device": "pump_laser", "setting": "laser_on", "value": True})
        return refused, confirm, after, laser.output_on

    refused, confirm, after, on = _run(tmp_path, "refuse", scenario)
    assert not refused["ok"] and refused["error"]["code"] == "device_unavailable"
    assert "current_setpoint_a is 0.05" in refused["error"]["message"]
    assert confirm["ok"] and after["ok"] and on


def test_on_loss_actions_are_checked_with_the_config(tmp_path):
    from controller.config import ConfigError

    raw = {
        "node": "n",
        "instruments": {
            "pump_laser": {"driver": "thorlabs_cld1015", "resource": "TCPIP::127.0.0.1::1::SOCKET"}
        },
        "daemon": {
            "on_loss": {
                "pump_laser": {
                    "actions": [{"device": "pump_laser", "setting": "nope", "value": 1}]
                },
                "ghost": {},
            }
        },
    }
    p = tmp_path / "d.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as exc:
        load_daemon_config(p)
    assert "daemon.on_loss.pump_laser.actions.0" in str(exc.value)
    assert "daemon.on_loss.ghost" in str(exc.value)


def test_memory_and_differences():
    m = DeviceMemory()
    m.baseline("l", {"a": 1.0, "on": True})
    m.remember("l", "a", 0.055)
    m.baseline("l", {"a": 2.0})  # commanded wins over a later read
    assert m.known["l"] == {"a": 0.055, "on": True}
    diffs = differences("l", m.known["l"], {"a": 0.0550000001, "on": False})
    assert [d.setting for d in diffs] == ["on"]
    assert same_value(0.055, 0.055 * (1 + 1e-9)) and not same_value(0.055, 0.05)
    m.refused["l"] = {"on": diffs[0]}
    assert "refused" in m.refusal("l", "a") and m.refusal("l", "on") is None
    m.remember("l", "on", False)
    assert m.refusal("l", "a") is None


# -- the instruments down: one line per device per minute, not one per retry --


def test_repeat_filter_collapses_alike_lines_and_counts_them():
    now = [0.0]
    f = RepeatFilter(period_s=60.0, clock=lambda: now[0])

    def rec(msg, *args, name="qnet.supervisor"):
        return logging.LogRecord(name, logging.WARNING, "x", 1, msg, args, None)

    passed = []
    for k in range(24):  # 2 minutes of a retry every 5 s, two devices
        now[0] = 5.0 * k
        for dev in ("pump_laser", "snspd_bias"):
            r = rec("%s faulted: %s", dev, "connection refused")
            if f.filter(r):
                passed.append(r.getMessage())
    assert passed[:2] == [
        "pump_laser faulted: connection refused",
        "snspd_bias faulted: connection refused",
    ]
    assert len(passed) == 4  # each device again once the minute is over, with its count
    assert (
        passed[2] == "pump_laser faulted: connection refused (repeated 11 times in the last 60 s)"
    )
    # numbers do not make lines different; names do
    assert f.filter(rec("There are %d pending publish calls.", 5, name="mqtt"))
    assert not f.filter(rec("There are %d pending publish calls.", 6, name="mqtt"))
    assert f.filter(rec("tagger1 faulted")) and f.filter(rec("tagger2 faulted"))


def test_instruments_down_log_is_rate_limited(tmp_path, caplog):
    """Reported: with the instruments down the log repeated one line per device every 5 s."""
    from controller.config import InstrumentConfig
    from controller.supervisor import DeviceWorker, Supervisor

    filt = RepeatFilter(period_s=60.0)
    caplog.handler.addFilter(filt)  # as qnet run installs it (pytest reuses this handler)

    async def main():
        workers = {}
        for name in ("a", "b"):
            ic = InstrumentConfig(
                driver="thorlabs_pm100", resource="TCPIP::127.0.0.1::1::SOCKET", timeout_s=0.2
            )
            workers[name] = DeviceWorker(
                name, ic.build(name), call_timeout_s=1.0, backoff_initial_s=0.02, backoff_max_s=0.05
            )
        sup = Supervisor(workers)
        sup.start()
        await asyncio.sleep(2.0)  # dozens of failed reconnects per device
        await sup.stop()
        await sup.close()
        return sum(w.errors for w in workers.values())

    try:
        with caplog.at_level(logging.WARNING, logger="qnet.supervisor"):
            errors = asyncio.run(main())
    finally:
        caplog.handler.removeFilter(filt)
    lines = [r.getMessage() for r in caplog.records if r.name == "qnet.supervisor"]
    assert errors >= 10
    assert len(lines) == 2, lines  # one per device, not one per retry


def test_install_gives_each_handler_its_own_filter():
    """One shared filter would drop every line from all handlers but the first."""
    from controller._logfilter import install_repeat_filter

    log = logging.getLogger("qnet.test.repeat")
    log.propagate = False
    got_a, got_b = [], []
    a, b = logging.Handler(), logging.Handler()
    a.emit = lambda r: got_a.append(r.getMessage())
    b.emit = lambda r: got_b.append(r.getMessage())
    for h in (a, b):
        log.addHandler(h)
    try:
        install_repeat_filter(handlers=[a, b])
        install_repeat_filter(handlers=[a, b])  # idempotent
        for _ in range(3):
            log.warning("device x faulted")
    finally:
        log.removeHandler(a)
        log.removeHandler(b)
    assert got_a == got_b == ["device x faulted"]
    assert len(a.filters) == len(b.filters) == 1
