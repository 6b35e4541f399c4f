"""Telemetry benchmarks: bridge ingest rate and publish-to-queryable latency (real servers).

* ``bridge ingest``: ``qnet bridge`` (a subprocess) drains a burst of N points, published as
  500-line QoS 1 messages to mosquitto, into VictoriaMetrics through the InfluxDB v2 write API.
  Points/s = N / (time from the first publish until VictoriaMetrics counted every row).
  Baseline, same run, same points: influxdb-client's synchronous write straight to
  VictoriaMetrics (no MQTT, no spool) in batches of 5000.
* ``publish-to-queryable latency``: one node's normal rate, 100 points/s (10 records every
  100 ms, as a node's 1 s integration windows produce them), through the real ``Publisher``
  (outbox) -> mosquitto -> ``qnet bridge`` -> VictoriaMetrics. Latency of a point = first time
  an export query (after ``/internal/force_flush``, polled every 50 ms) returns it, minus the
  time ``Publisher.submit`` was called for it. Reported: p99 (target < 1 s) and p50.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt

from benchmarks._harness import Row
from controller.testing import servers
from controller.testing.pipeline import (
    BridgeProcess,
    bridge_config,
    publisher_settings,
    stream_record,
)
from telemetry import Publisher, to_line
from telemetry._schema import with_seq

N_INGEST = 300_000
LINES_PER_MESSAGE = 500
ROWS_PER_POINT = 3  # singles: counts, rate_hz, seq


def _rows_inserted(vm: servers.Server) -> int:
    with urllib.request.urlopen(f"{vm.url}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(r'^vm_rows_inserted_total\{type="influx"\} (\d+)', text, re.M)
    return int(m.group(1)) if m else 0


def _wait_rows(vm: servers.Server, target: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _rows_inserted(vm) >= target:
            return time.monotonic()
        time.sleep(0.02)
    raise RuntimeError(f"VictoriaMetrics counted {_rows_inserted(vm)} rows, expected {target}")


def _lines(node: str, n: int) -> list[str]:
    return [to_line(with_seq(stream_record(node, i), i + 1)) for i in range(n)]


def _bench_ingest(tmp: Path, mq: servers.Server, vm: servers.Server) -> tuple[float, float]:
    from influxdb_client import InfluxDBClient, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    # baseline: direct synchronous writes of the same points (another node name, fresh series)
    lines = _lines("baseline", N_INGEST)
    before = _rows_inserted(vm)
    with InfluxDBClient(url=vm.url, token="", org="qnet") as client:
        api = client.write_api(write_options=SYNCHRONOUS)
        t0 = time.monotonic()
        for i in range(0, N_INGEST, 5000):
            api.write("qnet", "qnet", "\n".join(lines[i : i + 5000]), WritePrecision.NS)
        t1 = _wait_rows(vm, before + N_INGEST * ROWS_PER_POINT, 60)
    baseline = N_INGEST / (t1 - t0)

    bridge = BridgeProcess(bridge_config(tmp, mq, vm), tmp / "bridge-ingest.log").start()
    try:
        lines = _lines("ingest", N_INGEST)
        payloads = [
            "\n".join(lines[i : i + LINES_PER_MESSAGE]).encode()
            for i in range(0, N_INGEST, LINES_PER_MESSAGE)
        ]
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-ingest")
        c.max_inflight_messages_set(100)
        c.connect("127.0.0.1", mq.port)
        c.loop_start()
        before = _rows_inserted(vm)
        t0 = time.monotonic()
        infos = [c.publish("qnet/v1/ingest/telemetry/singles", p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(60)
        t1 = _wait_rows(vm, before + N_INGEST * ROWS_PER_POINT, 120)
        c.loop_stop()
        c.disconnect()
    finally:
        bridge.stop()
    return N_INGEST / (t1 - t0), baseline


def _bench_latency(
    tmp: Path, mq: servers.Server, vm: servers.Server, seconds: float = 20.0
) -> list[float]:
    bridge = BridgeProcess(bridge_config(tmp, mq, vm), tmp / "bridge-latency.log").start()
    submitted: dict[int, float] = {}
    seen: dict[int, float] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            t = time.monotonic()
            for series in servers.vm_export(vm, '{__name__="singles_seq",node="lat"}'):
                for v in series["values"]:
                    seen.setdefault(int(v), t)
            time.sleep(0.05)

    async def main() -> None:
        pub = Publisher(publisher_settings(tmp, mq, node="lat"))
        pub.start()
        poller = asyncio.create_task(asyncio.to_thread(poll))
        t_start = time.monotonic()
        i = 0
        while time.monotonic() - t_start < seconds:
            now = time.monotonic()
            for s in pub.submit([stream_record("lat", i + k) for k in range(10)]):
                submitted[s] = now
            i += 10
            await asyncio.sleep(max(0.0, t_start + i / 100 - time.monotonic()))
        await pub.wait_drained(10)
        deadline = time.monotonic() + 10
        while len(seen) < len(submitted) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stop.set()
        await poller
        await pub.close()

    try:
        asyncio.run(main())
    finally:
        bridge.stop()
    missing = set(submitted) - set(seen)
    if missing:
        raise RuntimeError(f"{len(missing)} points never became queryable")
    return sorted(seen[s] - submitted[s] for s in submitted)


def run() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="qnet-bench-telemetry-") as d:
        tmp = Path(d)
        mq = servers.start_mosquitto(tmp / "mosquitto")
        vm = servers.start_victoria_metrics(tmp / "vm")
        try:
            rate, baseline = _bench_ingest(tmp, mq, vm)
            lat = _bench_latency(tmp, mq, vm)
        finally:
            mq.stop()
            vm.stop()
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    p50 = lat[len(lat) // 2]
    return [
        Row(
            "telemetry: bridge ingest MQTT -> VictoriaMetrics",
            rate,
            "points/s",
            target=">= 50000",
            ok=rate >= 50_000,
            baseline=baseline,
            baseline_name="influxdb-client sync write, no MQTT",
            notes=f"{N_INGEST} points in {LINES_PER_MESSAGE}-line QoS 1 messages",
        ),
        Row(
            "telemetry: publish-to-queryable latency p99 @100 pts/s",
            p99,
            "s",
            target="< 1",
            ok=p99 < 1.0,
            notes=f"p50 {p50:.3f} s, max {lat[-1]:.3f} s, {len(lat)} points; 50 ms polling",
            extra={"p50_s": p50, "max_s": lat[-1], "points": len(lat)},
        ),
    ]
