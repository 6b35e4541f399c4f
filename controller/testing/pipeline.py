"""Helpers shared by the telemetry integration tests and the reliability run.

A numbered stream (``seq`` assigned by the publisher's outbox, one distinct millisecond per
point), the bridge as a real ``qnet bridge`` subprocess, and exact counting in VictoriaMetrics.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from controller.testing import servers
from telemetry import Publisher, PublisherSettings, Record, singles

REPO = Path(__file__).resolve().parents[2]
T0_NS = 1_700_000_000_000_000_000


def stream_record(node: str, i: int, t0_ns: int = T0_NS) -> Record:
    """The i-th point (0-based) of a numbered stream: one distinct millisecond per point."""
    return singles(
        node=node, channel=1 + i % 4, counts=i, rate_hz=float(i % 1000), time_ns=t0_ns + i * 10**6
    )


def publisher_settings(
    tmp: Path, mq: servers.Server, node: str = "alice", **broker: Any
) -> PublisherSettings:
    return PublisherSettings.model_validate(
        {
            "node": node,
            "broker": {
                "port": mq.port,
                "client_id": f"qnet-pub-{node}",
                "reconnect_min_s": 0.1,
                "reconnect_max_s": 1.0,
                **broker,
            },
            "outbox": {"path": str(tmp / f"outbox-{node}.db")},
        }
    )


def bridge_config(tmp: Path, mq: servers.Server, vm: servers.Server, **extra: Any) -> Path:
    cfg = {
        "broker": {
            "host": "127.0.0.1",
            "port": mq.port,
            "client_id": "qnet-bridge-test",
            "reconnect_min_s": 1,
            "reconnect_max_s": 1,
            "keepalive_s": 10,
        },
        "influx": {
            "url": vm.url,
            "batch_points": 5000,
            "retry_min_s": 0.1,
            "retry_max_s": 0.5,
            "timeout_s": 5,
        },
        "spool": {"path": str(tmp / "bridge-spool.db")},
    }
    for key, value in extra.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    path = tmp / "bridge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class BridgeProcess:
    """``qnet bridge CONFIG`` as a subprocess, logging to a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BridgeProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from controller.cli import main; main()",
                    "bridge",
                    str(self.config),
                ],
                cwd=REPO,
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if "connected to" in self.log.read_text(errors="replace"):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"bridge exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"bridge did not connect: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 30) -> int | None:
        if self.proc is None:
            return None
        return servers.terminate(self.proc, timeout_s)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def stored_seqs(vm: servers.Server, node: str = "alice", measurement: str = "singles") -> list[int]:
    """Every stored ``seq`` value of a node's measurement (duplicates kept, so they show)."""
    out: list[int] = []
    for series in servers.vm_export(vm, f'{{__name__="{measurement}_seq",node="{node}"}}'):
        out.extend(int(v) for v in series["values"])  # type: ignore[union-attr]
    return out


def wait_for_count(vm: servers.Server, n: int, timeout_s: float, node: str = "alice") -> list[int]:
    """Poll until at least ``n`` seq values are stored (or the timeout); return them."""
    deadline = time.monotonic() + timeout_s
    seqs = stored_seqs(vm, node)
    while len(set(seqs)) < n and time.monotonic() < deadline:
        time.sleep(0.25)
        seqs = stored_seqs(vm, node)
    return seqs


async def publish_stream(
    pub: Publisher, node: str, n: int, rate_hz: float, chunk: int = 10, start: int = 0
) -> None:
    """Submit points ``start..start+n-1`` at about ``rate_hz`` points/s, ``chunk`` at a time."""
    t_start = time.monotonic()
    for i in range(start, start + n, chunk):
        pub.submit([stream_record(node, j) for j in range(i, min(i + chunk, start + n))])
        due = t_start + (i - start + chunk) / rate_hz
        await asyncio.sleep(max(0.0, due - time.monotonic()))


def simulated_run(t0_ns: int, seconds: int, link: str = "alice-bob") -> list[Record]:
    """Plausible records of a short two-node QKD run, one sample per second, via the helpers."""
    import math
    import random

    from telemetry import (
        coincidences,
        detector,
        health,
        interlock,
        key_rate,
        laser,
        polarization,
        power_meter,
        qber,
    )

    rng = random.Random(7)
    out = []
    for s in range(seconds):
        t = t0_ns + s * 10**9
        for node in ("alice", "bob"):
            for ch in range(1, 5):
                rate = 50_000 + 5_000 * math.sin(s / 10 + ch) + rng.gauss(0, 300)
                out.append(
                    singles(
                        node=node,
                        channel=ch,
                        counts=int(rate),
                        rate_hz=rate,
                        integration_s=1.0,
                        time_ns=t,
                    )
                )
            for a, b in ((1, 1), (2, 2), (3, 3), (4, 4)):
                c = int(2_000 + rng.gauss(0, 50))
                acc = 50_000**2 * 1e-9 * 1.0
                out.append(
                    coincidences(
                        node=node,
                        link=link,
                        channel_a=a,
                        channel_b=b,
                        counts=c,
                        accidentals=acc,
                        car=c / acc,
                        rate_hz=float(c),
                        window_ps=1000,
                        integration_s=1.0,
                        time_ns=t,
                    )
                )
            for basis, q in (("z", 0.02), ("x", 0.03)):
                out.append(
                    qber(
                        node=node,
                        link=link,
                        basis=basis,
                        qber=q + rng.gauss(0, 0.002),
                        errors=int(q * 4000),
                        sifted=4000,
                        time_ns=t,
                    )
                )
            out.append(
                key_rate(
                    node=node,
                    link=link,
                    sifted_bps=4000.0,
                    secure_bps=1500.0,
                    qber_z=0.02,
                    qber_x=0.03,
                    time_ns=t,
                )
            )
            out.append(
                laser(
                    node=node,
                    device="pump",
                    current_a=0.05,
                    temperature_k=298.15,
                    power_w=0.012,
                    output_on=True,
                    time_ns=t,
                )
            )
            out.append(
                detector(
                    node=node,
                    device="snspd1",
                    channel=1,
                    bias_current_a=12e-6,
                    temperature_k=2.4,
                    efficiency=0.8,
                    state="armed",
                    armed=True,
                    time_ns=t,
                )
            )
            out.append(
                power_meter(node=node, device="pm1", power_w=1e-6, wavelength_m=1.55e-6, time_ns=t)
            )
            for axis in range(3):
                out.append(
                    polarization(
                        node=node,
                        device="epc",
                        axis=axis,
                        setpoint=0.5 * axis,
                        readback=0.5 * axis,
                        time_ns=t,
                    )
                )
            out.append(
                health(
                    node=node,
                    device="pump",
                    ok=True,
                    state="ok",
                    errors=0,
                    latency_s=0.01,
                    time_ns=t,
                )
            )
    out.append(
        interlock(
            node="alice",
            interlock="laser_temperature",
            active=True,
            event="trip",
            reason="temperature above 310 K",
            device="pump",
            time_ns=t0_ns + seconds // 2 * 10**9,
        )
    )
    out.append(
        interlock(
            node="alice",
            interlock="laser_temperature",
            active=False,
            event="clear",
            reason="back in range",
            device="pump",
            time_ns=t0_ns + (seconds // 2 + 5) * 10**9,
        )
    )
    return out
