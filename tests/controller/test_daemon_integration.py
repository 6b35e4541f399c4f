"""The daemon (`qnet run`, a real subprocess) against the emulated testbed and a real mosquitto.

One scenario, in order: calibrates and reports QBER below the threshold; trips and recovers
each interlock (count rate, SNSPD latch, laser TEC, QBER -> compensation of an imposed
polarization drift); survives an instrument emulator being killed and restarted; rejects
thousands of fuzzed commands (each answered exactly once, however long a busy machine takes)
without any setpoint changing; shuts down cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import pytest

from controller._remote import request
from controller.simnode import make_sim_node
from controller.testing import servers
from telemetry import BrokerSettings, command_topic, reply_topic

pytestmark = [pytest.mark.servers, pytest.mark.slow, pytest.mark.timeout(400)]

NODE = "sim-node"
QNET = str(Path(sys.executable).parent / "qnet")


def _daemon_changes(raw):
    d = raw["daemon"]
    # the emulated SNSPDs see ~160 kHz at the default pump current: trip at 300 kHz
    d["interlocks"]["count_rate"].update(trip_above=3.0e5, clear_below=2.0e5)
    d["calibration"]["track_every"] = 3
    d["compensation"].update(window_s=0.25, target_qber=0.02)


def _testbed_changes(raw):
    raw["physics"]["bob"]["drift_rad_per_sqrt_s"] = 0.0  # drift is imposed by the test


@pytest.fixture
def sim(tmp_path):
    servers.require("mosquitto")
    broker = servers.start_mosquitto(tmp_path / "mosquitto")
    tb, cfg_path = make_sim_node(
        tmp_path / "node",
        broker=("127.0.0.1", broker.port),
        testbed_changes=_testbed_changes,
        daemon_changes=_daemon_changes,
    )
    tb.serve()
    env = dict(os.environ)
    proc = subprocess.Popen(
        [QNET, "run", str(cfg_path), "--log-level", "INFO"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=str(tmp_path),
    )
    try:
        yield tb, broker, proc, cfg_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        tb.stop()
        broker.stop()


def _broker(port):
    return BrokerSettings(host="127.0.0.1", port=port, client_id=f"test-{random.random()}")


def _ask(port, body, timeout=15.0):
    return asyncio.run(request(_broker(port), NODE, body, timeout))


def _status(port):
    r = _ask(port, {"device": "daemon", "action": "status"})
    assert r["ok"], r
    return r["result"]


def _wait(port, cond, timeout, what):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = _status(port)
        except Exception as exc:  # daemon not up yet
            last = {"error": str(exc)}
            time.sleep(0.3)
            continue
        if cond(last):
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last status: {json.dumps(last)[:3000]}")


def _events(st, kind):
    return [e["text"] for e in st["events"] if e["kind"] == kind]


def _window_ok(st):
    lw = st.get("last_window") or {}
    return lw.get("qber") is not None and lw["qber"] < 0.06


def test_daemon_end_to_end(sim):
    tb, broker, proc, cfg_path = sim
    port = broker.port

    # -- calibrates, then QBER below the interlock threshold, key running
    st = _wait(
        port,
        lambda s: s["calibration"].get("state") == "done" and _window_ok(s),
        90,
        "calibration and a good QBER",
    )
    assert all(v == "ready" for v in st["devices"].values()), st["devices"]
    assert st["key_paused"] is False
    assert st["last_window"]["secure_rate_bps"] > 0
    import numpy as np

    from drivers.sim import physics as ph

    truth = ph.channel_delays_ps(tb.params)
    truth = truth - truth[0]
    assert np.all(np.abs(np.array(st["delays_ps"]) - truth) < 100), (st["delays_ps"], truth)

    # -- telemetry reaches the broker: window records and polled device readings
    seen = asyncio.run(_telemetry_topics(port, 3.0))
    kinds = ("singles", "coincidences", "qber", "key_rate", "laser", "polarization", "health")
    for m in (*kinds, "telemetry"):
        assert f"qnet/v1/{NODE}/telemetry/{m}" in seen, sorted(seen)

    # -- the CLI against the running daemon (exit codes scripts can trust)
    from typer.testing import CliRunner

    from controller.cli import app

    cli = CliRunner()
    r = cli.invoke(app, ["get", str(cfg_path), "pump_laser", "current_setpoint_a"])
    assert r.exit_code == 0 and float(r.output.strip()) == pytest.approx(0.05), r.output
    r = cli.invoke(app, ["set", str(cfg_path), "pump_laser", "current_setpoint_a", "0.5"])
    assert r.exit_code == 1 and "out_of_limits" in r.output, r.output
    # a negative value is a value (not an option), refused by the daemon with exact limits
    r = cli.invoke(app, ["set", str(cfg_path), "pump_laser", "current_setpoint_a", "-0.01"])
    assert r.exit_code == 1 and "= -0.01 is outside the safe range" in r.output, r.output
    r = cli.invoke(app, ["set", str(cfg_path), "pump_laser", "current_setpoint_a", "0.1000001"])
    assert r.exit_code == 1 and "0.1000001" in r.output, r.output
    # `daemon` is listed as a device by the help: its readings answer a get
    r = cli.invoke(app, ["get", str(cfg_path), "daemon", "status"])
    assert r.exit_code == 0 and json.loads(r.output)["node"] == NODE, r.output
    r = cli.invoke(app, ["calibrate", str(cfg_path)])
    assert r.exit_code == 0 and "delays_ps" in r.output, r.output
    r = cli.invoke(app, ["status", str(cfg_path), "--once"])
    assert r.exit_code == 0 and json.loads(r.output)["node"] == NODE

    laser = tb.emulators["pump_laser"]

    # -- count-rate interlock: pump up -> rates above 300 kHz -> laser off -> clear
    r = _ask(port, {"device": "pump_laser", "setting": "current_setpoint_a", "value": 0.1})
    assert r["ok"], r
    st = _wait(
        port,
        lambda s: any("count_rate clear" in t for t in _events(s, "interlock")),
        60,
        "count-rate trip and clear",
    )
    assert any("count_rate trip" in t for t in _events(st, "interlock"))
    assert laser.output_on is False
    # operator restores the pump
    assert _ask(port, {"device": "pump_laser", "setting": "current_setpoint_a", "value": 0.05})[
        "ok"
    ]
    assert _ask(port, {"device": "pump_laser", "setting": "laser_on", "value": True})["ok"]
    _wait(port, _window_ok, 60, "light back after the count-rate interlock")

    # -- SNSPD latch: reset sequence brings it back
    smu = tb.emulators["snspd_bias"]
    with smu.lock:
        smu.latched = True
    st = _wait(
        port,
        lambda s: any("snspd_latch clear" in t for t in _events(s, "interlock")),
        30,
        "latch trip and recovery",
    )
    assert any("snspd_latch trip" in t for t in _events(st, "interlock"))
    assert smu.latched is False and smu.bias_current_a > 10e-6

    # -- laser TEC out of range -> laser off; back in range -> clear
    with laser.lock:
        laser.read_tec_temperature_c = lambda sp, on: 35.0
    _wait(port, lambda s: "laser_tec" in s["interlocks_active"], 30, "TEC trip")
    assert laser.output_on is False
    with laser.lock:
        laser.read_tec_temperature_c = lambda sp, on: 25.0
    _wait(port, lambda s: "laser_tec" not in s["interlocks_active"], 30, "TEC clear")
    assert _ask(port, {"device": "pump_laser", "setting": "laser_on", "value": True})["ok"]
    _wait(port, _window_ok, 60, "light back after the TEC interlock")

    # -- imposed polarization drift: QBER trips, key paused, compensation brings it back
    tb.impose_rotation((0.0, 1.0, 0.6))
    st = _wait(port, lambda s: s["key_paused"], 60, "QBER trip pausing the key")
    assert "qber" in st["interlocks_active"] or any(
        "qber trip" in t for t in _events(st, "interlock")
    )
    st = _wait(
        port,
        lambda s: (
            not s["key_paused"] and s["compensation"].get("state") in ("converged", "stopped")
        ),
        240,
        "compensation and key resumed",
    )
    assert st["compensation"]["state"] == "converged", st["compensation"]
    assert st["compensation"]["qber"] < 0.02
    _wait(port, _window_ok, 30, "good QBER after compensation")

    # -- an emulator killed and restarted: only that device faults, then it recovers
    tb.inject_fault("spad", "disconnect")
    st = _wait(port, lambda s: s["devices"]["spad"] == "faulted", 30, "spad faulted")
    r = _ask(port, {"device": "spad", "setting": "bias_v"})
    assert not r["ok"] and r["error"]["code"] in ("device_unavailable", "device_timeout")
    windows_at_fault = st["windows"]
    _wait(
        port,
        lambda s: s["devices"]["spad"] == "faulted" and s["windows"] > windows_at_fault,
        30,
        "acquisition going on while the spad is faulted",
    )
    tb.inject_fault("spad", "none")
    st = _wait(port, lambda s: s["devices"]["spad"] == "ready", 30, "spad back")
    assert all(v == "ready" for v in st["devices"].values())

    # -- fuzzed commands: each gets an error reply, daemon stays up, no setpoint changes
    before = (
        laser.current_setpoint_a,
        laser.output_on,
        smu.bias_current_a,
        list(tb.emulators["polarization_controller"].setpoints),
    )
    n_sent, replies = asyncio.run(_fuzz(port, 2000))
    # every command answered exactly once (waited for, however busy the machine is)
    assert replies["unanswered"] == 0 and replies["answered_twice"] == 0, replies
    assert replies["total"] == n_sent, replies
    assert replies["ok"] == 0, replies
    assert (
        replies["codes"]
        - {
            "bad_request",
            "unknown_device",
            "unknown_setting",
            "unknown_action",
            "bad_value",
            "out_of_limits",
            "forbidden",
        }
        == set()
    ), replies
    after = (
        laser.current_setpoint_a,
        laser.output_on,
        smu.bias_current_a,
        list(tb.emulators["polarization_controller"].setpoints),
    )
    assert after == before
    assert proc.poll() is None
    assert _status(port)["acquisition"] == "running"

    # -- SIGTERM: safe state, outbox flushed, exit 0 within 5 s
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(10)
    elapsed = time.monotonic() - t0
    out = proc.stdout.read().decode(errors="replace")
    assert rc == 0, out[-3000:]
    assert elapsed < 5.5, elapsed
    assert laser.output_on is False
    assert smu.bias_current_a == 0.0
    assert "shut down in" in out


def _malformed(rng: random.Random) -> bytes:
    """A request that must be refused (bad JSON, bad shape, unknown names, out of range)."""
    choices = [
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40))),
        lambda: b"{" * rng.randint(1, 50),
        lambda: json.dumps(rng.choice([[], 1, "x", None, 3.5])).encode(),
        lambda: json.dumps({"device": "pump_laser", "setting": "laser_on", "value": True}).encode(),
        lambda: (
            json.dumps(
                {
                    "id": rng.randint(0, 9),
                    "device": "pump_laser",
                    "setting": "current_setpoint_a",
                    "value": rng.choice([0.2, -0.1, 1e9, "0.05", True, None, [0.05]]),
                }
            )
            .encode()
            .replace(b'"value": null', b'"value": "nan"')
        ),
        lambda: json.dumps(
            {"id": "x", "device": rng.choice(["laser", "", "daemon"]), "action": "explode"}
        ).encode(),
        lambda: json.dumps(
            {"id": 1, "device": "snspd_bias", "setting": "bias_current_a", "value": 1e-3}
        ).encode(),
        lambda: json.dumps(
            {
                "id": 1,
                "device": "polarization_controller",
                "setting": "element2_voltage_v",
                "value": rng.choice([-1, 11, 1e300]),
            }
        ).encode(),
        lambda: json.dumps(
            {"id": 1, "device": "pump_laser", "setting": "laser_on", "value": 1, "extra": 1}
        ).encode(),
        lambda: (
            b'{"id": 1, "device": "pump_laser", "setting": "current_setpoint_a", "value": Infinity}'
        ),
    ]
    return rng.choice(choices)()


async def _fuzz(port: int, n: int, timeout_s: float = 300.0) -> tuple[int, dict]:
    """Publish ``n`` malformed requests, each on its own topic; count the replies of each.

    Waits until every request has a reply (or ``timeout_s``, generous: a busy machine is
    slow, not wrong), then a little longer for any second reply.
    """
    rng = random.Random(7)
    prefix = "anonymous/fuzz/"
    per_request: dict[int, int] = {}
    counts: dict = {"total": 0, "ok": 0, "codes": set()}
    async with aiomqtt.Client("127.0.0.1", port, identifier="fuzzer") as client:
        await client.subscribe(reply_topic(NODE, prefix + "#"), qos=1)
        done = asyncio.Event()

        async def collect() -> None:
            start = len(reply_topic(NODE, prefix))
            async for msg in client.messages:
                k = int(str(msg.topic)[start:])
                per_request[k] = per_request.get(k, 0) + 1
                body = json.loads(msg.payload)
                counts["total"] += 1
                if body.get("ok"):
                    counts["ok"] += 1
                else:
                    counts["codes"].add(body["error"]["code"])
                if len(per_request) >= n:
                    done.set()

        reader = asyncio.create_task(collect())
        for k in range(n):
            await client.publish(command_topic(NODE, f"{prefix}{k}"), _malformed(rng), qos=1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout_s)
        await asyncio.sleep(1.0)  # a second reply to any request would arrive by now
        reader.cancel()
    counts["unanswered"] = n - len(per_request)
    counts["answered_twice"] = sum(1 for v in per_request.values() if v > 1)
    return n, counts


async def _telemetry_topics(port: int, seconds: float) -> set[str]:
    from telemetry import parse_lines

    seen: set[str] = set()
    async with aiomqtt.Client("127.0.0.1", port, identifier="telemetry-probe") as client:
        await client.subscribe(f"qnet/v1/{NODE}/telemetry/#", qos=1)
        try:
            async with asyncio.timeout(seconds):
                async for msg in client.messages:
                    parse_lines(msg.payload.decode())  # valid line protocol of the schema
                    seen.add(str(msg.topic))
        except TimeoutError:
            pass
    return seen
