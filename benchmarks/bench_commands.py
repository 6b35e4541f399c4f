"""The command API's speed through a real mosquitto: refusals and valid gets, with p99 latency.

A real ``qnet run`` daemon (subprocess) with one emulated pump laser (a CLD1015 emulator
served on a loopback port in this process) answers requests published by one aiomqtt
client in this process, ``WINDOW`` requests in flight, each on its own topic:

* malformed requests (bad JSON, bad shapes, unknown names, out-of-range and non-finite
  values), which are refused before any instrument is touched: target >= 1000 /s;
* valid ``get`` requests of the laser's set-point (each one an instrument exchange):
  target >= 100 /s.

Latency is from publish to reply, per request; p50 and p99 are reported. The per-user
rate limit is raised for the run (this measures the API, not the limit). Baseline, timed
in the same run: a bare MQTT echo (a subprocess answering every request at once, no
checks) with the same client and window, i.e. what the broker path allows; the notes also
give the command server's own rate in-process (no broker).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from benchmarks._harness import Row
from controller.command_server import _no_delay
from controller.testing import servers

NODE = "bench-cmd"
WINDOW = 32
N_REFUSALS = 3000
N_GETS = 600


def _malformed(rng: random.Random, k: int) -> bytes:
    """A request the daemon must refuse (never a valid one)."""
    choices: list[Any] = [
        lambda: b"{" * rng.randint(1, 40),
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 30))),
        lambda: json.dumps([k]).encode(),
        lambda: json.dumps({"id": k, "device": "pump_laser", "setting": "nope"}).encode(),
        lambda: json.dumps(
            {"id": k, "device": "pump_laser", "setting": "current_setpoint_a", "value": 5.0}
        ).encode(),
        lambda: json.dumps(
            {"id": k, "device": "pump_laser", "setting": "current_setpoint_a", "value": "0.05"}
        ).encode(),
        lambda: (
            b'{"id": %d, "device": "pump_laser", "setting": "current_setpoint_a", "value": NaN}' % k
        ),
        lambda: json.dumps({"id": k, "device": "laser", "action": "explode"}).encode(),
    ]
    return rng.choice(choices)()


def _get(k: int) -> bytes:
    return json.dumps({"id": k, "device": "pump_laser", "setting": "current_setpoint_a"}).encode()


async def _drive(port: int, payloads: list[bytes]) -> tuple[float, list[float], dict[str, int]]:
    """Send every payload (WINDOW in flight); (seconds, latencies s, reply codes)."""
    import aiomqtt

    user = f"bench-{uuid.uuid4().hex[:6]}"
    prefix_cmd = f"qnet/v1/{NODE}/cmd/{user}/"
    prefix_rep = f"qnet/v1/{NODE}/reply/{user}/"
    sent: dict[int, float] = {}
    waiters: dict[int, asyncio.Future[None]] = {}
    lat: list[float] = []
    codes: dict[str, int] = {}
    async with aiomqtt.Client("127.0.0.1", port, identifier=user) as c:
        c.pending_calls_threshold = 10 * WINDOW
        _no_delay(c)
        await c.subscribe(prefix_rep + "#", qos=1)

        async def read() -> None:
            async for msg in c.messages:
                k = int(str(msg.topic)[len(prefix_rep) :])
                lat.append(time.perf_counter() - sent[k])
                body = json.loads(msg.payload)
                code = "ok" if body.get("ok") else body["error"]["code"]
                codes[code] = codes.get(code, 0) + 1
                fut = waiters.pop(k, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)

        reader = asyncio.create_task(read())
        sem = asyncio.Semaphore(WINDOW)
        loop = asyncio.get_running_loop()

        async def one(k: int, p: bytes) -> None:
            async with sem:
                waiters[k] = loop.create_future()
                sent[k] = time.perf_counter()
                await c.publish(prefix_cmd + str(k), p, qos=1)
                await asyncio.wait_for(waiters[k], 60)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(k, p) for k, p in enumerate(payloads)))
        elapsed = time.perf_counter() - t0
        reader.cancel()
    return elapsed, lat, codes


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def _in_process_refusals(payloads: list[bytes]) -> float:
    """Refusals per second through CommandServer.handle_payload alone (no broker)."""
    from controller.command_server import CommandServer
    from controller.commands import CommandSettings, PermissionsConfig, surface_for
    from drivers import DRIVERS

    surf = surface_for("pump_laser", DRIVERS["thorlabs_cld1015"], {"current_setpoint_a": (0, 0.1)})

    async def never(_v: Any) -> Any:
        raise AssertionError("a malformed request reached execute")

    srv = CommandServer(
        NODE,
        None,
        CommandSettings(),
        PermissionsConfig(default_role="operator"),
        {"pump_laser": surf},
        never,
        lambda *a: None,
    )

    async def main() -> float:
        t0 = time.perf_counter()
        for p in payloads:
            await srv.handle_payload(p)
        return len(payloads) / (time.perf_counter() - t0)

    import logging

    logging.getLogger("qnet.commands").setLevel(logging.WARNING)
    return asyncio.run(main())


_ECHO = """
import asyncio, socket, sys
import aiomqtt

async def main(port):
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-echo",
                              protocol=aiomqtt.ProtocolVersion.V5) as c:
        c._client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await c.subscribe("qnet/v1/%s/cmd/#", qos=1)
        print("ready", flush=True)
        reply = b'{"id":null,"ok":false,"error":{"code":"echo","message":""}}'
        async for m in c.messages:
            t = str(m.topic).replace("/cmd/", "/reply/", 1)
            asyncio.get_running_loop().create_task(c.publish(t, reply, qos=0))

asyncio.run(main(int(sys.argv[1])))
"""


def _echo_rate(port: int, payloads: list[bytes]) -> tuple[float, float]:
    """(requests/s, p99 s) of a bare MQTT echo answering at once: the broker path's ceiling."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _ECHO % NODE, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        elapsed, lat, _ = asyncio.run(_drive(port, payloads))
    finally:
        servers.terminate(proc, 5)
    return len(payloads) / elapsed, _pct(lat, 0.99)


def _config(workdir: Path, mq_port: int, laser_port: int) -> Path:
    raw = {
        "node": NODE,
        "instruments": {
            "pump_laser": {
                "driver": "thorlabs_cld1015",
                "resource": f"TCPIP::127.0.0.1::{laser_port}::SOCKET",
                "poll_interval_s": 1.0,
                "timeout_s": 0.5,
            }
        },
        "daemon": {
            "telemetry": {
                "broker": {"host": "127.0.0.1", "port": mq_port, "client_id": "bench-cmd-daemon"},
                "outbox": {"path": str(workdir / "outbox.sqlite")},
            },
            "permissions": {"default_role": "operator"},
            "commands": {"rate_per_user_hz": 1e6, "burst": 1_000_000, "device_queue": 4 * WINDOW},
        },
    }
    p = workdir / "daemon.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


async def _wait_ready(port: int, timeout_s: float) -> None:
    from controller._remote import RemoteError, request
    from telemetry import BrokerSettings

    deadline = time.monotonic() + timeout_s
    while True:
        b = BrokerSettings(host="127.0.0.1", port=port, client_id=f"probe-{uuid.uuid4().hex[:6]}")
        try:
            r = await request(b, NODE, {"device": "pump_laser", "setting": "current_setpoint_a"}, 2)
            if r.get("ok"):
                return
        except RemoteError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the daemon did not answer within the startup timeout")
        await asyncio.sleep(0.3)


def run() -> list[Row]:
    """The two rows (refusals, gets) from one daemon and one broker."""
    from drivers.sim.instruments import CLD1015Emulator
    from drivers.sim.server import InstrumentServer

    rng = random.Random(11)
    malformed = [_malformed(rng, k) for k in range(N_REFUSALS)]
    gets = [_get(k) for k in range(N_GETS)]
    baseline = _in_process_refusals(malformed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        emu = CLD1015Emulator()
        emu.current_setpoint_a = 0.05
        srv = InstrumentServer(emu).start()
        # as configs/mosquitto/mosquitto.conf: no Nagle delay on the broker's sockets either
        mq = servers.start_mosquitto(
            work / "mq", persistence=False, extra_config="set_tcp_nodelay true\n"
        )
        env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", os.getcwd())}
        logf = open(work / "daemon.log", "wb")  # noqa: SIM115 (closed after the daemon)
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "qnet"),
                "run",
                str(_config(work, mq.port, srv.port)),
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp,
        )
        try:
            try:
                asyncio.run(_wait_ready(mq.port, 60))
                ref_s, ref_lat, ref_codes = asyncio.run(_drive(mq.port, malformed))
                get_s, get_lat, get_codes = asyncio.run(_drive(mq.port, gets))
            except RuntimeError as exc:
                log = (work / "daemon.log").read_text()[-2000:]
                raise RuntimeError(f"{exc}; daemon log:\n{log}") from None
            finally:
                servers.terminate(proc, 10)
                logf.close()
            echo_rate, echo_p99 = _echo_rate(mq.port, malformed)
        finally:
            mq.stop()
            srv.stop()
    ref_rate = N_REFUSALS / ref_s
    get_rate = N_GETS / get_s
    ok_refused = ref_codes.get("ok", 0) == 0 and sum(ref_codes.values()) == N_REFUSALS
    ok_gets = get_codes.get("ok", 0) == N_GETS
    return [
        Row(
            "command API: malformed requests refused via mosquitto",
            round(ref_rate, 1),
            "req/s",
            target=">= 1000",
            ok=ref_rate >= 1000 and ok_refused,
            baseline=round(echo_rate, 1),
            baseline_name="bare MQTT echo, same client and window (the broker path's ceiling)",
            notes=(
                f"{N_REFUSALS} requests, {WINDOW} in flight; reply latency p50 "
                f"{_pct(ref_lat, 0.5) * 1e3:.1f} ms, p99 {_pct(ref_lat, 0.99) * 1e3:.1f} ms "
                f"(echo p99 {echo_p99 * 1e3:.1f} ms); the command server alone (in-process, "
                f"no broker) refuses {baseline:.0f} /s; codes "
                f"{json.dumps(ref_codes, sort_keys=True)}"
            ),
            extra={
                "p99_ms": _pct(ref_lat, 0.99) * 1e3,
                "p50_ms": _pct(ref_lat, 0.5) * 1e3,
                "in_process_per_s": baseline,
            },
        ),
        Row(
            "command API: valid gets (laser set-point) via mosquitto",
            round(get_rate, 1),
            "req/s",
            target=">= 100",
            ok=get_rate >= 100 and ok_gets,
            notes=(
                f"{N_GETS} gets, {WINDOW} in flight, one instrument exchange each; reply "
                f"latency p50 {_pct(get_lat, 0.5) * 1e3:.1f} ms, p99 "
                f"{_pct(get_lat, 0.99) * 1e3:.1f} ms; codes {json.dumps(get_codes)}"
            ),
            extra={"p99_ms": _pct(get_lat, 0.99) * 1e3, "p50_ms": _pct(get_lat, 0.5) * 1e3},
        ),
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
