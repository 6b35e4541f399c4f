"""The long reliability run: a numbered stream through broker, database and bridge failures.

``.venv/bin/python -m benchmarks.reliability`` (about 2.5 minutes) starts real mosquitto
(persistence on) and VictoriaMetrics (dedup at 1 ms: a replayed point overwrites itself, as in
InfluxDB), runs ``qnet bridge`` as a subprocess and the real ``Publisher`` in this process,
publishing a numbered stream (``seq`` 1..N, one distinct millisecond per point) at ``--rate``
points/s while, one after the other:

1. the broker is stopped for ``--broker-outage-s`` (30 s) and restarted;
2. the database is stopped for ``--db-outage-s`` (60 s) and restarted;
3. the bridge is SIGKILLed ``--kills`` times (3) mid-stream and restarted at once;
4. malformed, foreign and oversized messages are published on the telemetry topics.

Then it counts what VictoriaMetrics stored: lost = published seqs not stored, duplicates =
stored values beyond one per seq, per scenario (the seqs submitted during its window) and in
total. The storage-fault scenario (the outbox's disk fills up, then space returns) and the
restart scenario (a daemon restart while the taggers kept counting), the command flood,
the channel and link engine outages and the key store's kill -9 scenario add their figures
(alone, printed only: ``--only-faults``). It writes the figures into
docs/RELIABILITY.md between the ``reliability:`` markers
(``--no-write`` to only print them). Exit code 1 if anything was lost or duplicated (the
stream, and the key store: a confirmed block lost or a key delivered twice).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from controller.testing import servers
from controller.testing.pipeline import (
    BridgeProcess,
    bridge_config,
    publisher_settings,
    stored_seqs,
    stream_record,
)
from telemetry import Publisher

DOC = Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md"
BEGIN, END = "<!-- reliability:begin -->", "<!-- reliability:end -->"
NODE = "alice"
ROWS_PER_POINT = 3
KEY_STORE_KILL = "key store kill -9"  # the name of that fault scenario's rows


class Run:
    """State of one reliability run."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.mq = servers.start_mosquitto(tmp / "mosquitto")
        self.vm = servers.start_victoria_metrics(tmp / "vm")
        self.bridge = BridgeProcess(bridge_config(tmp, self.mq, self.vm), tmp / "bridge.log")
        self.bridge.start()
        self.next_i = 0
        self.windows: list[tuple[str, int, int]] = []  # (scenario, first seq, last seq)
        self.catch_up: dict[str, float] = {}
        self.max_outbox = 0
        self.bad_sent = 0
        self.rows_before_restart = 0  # VictoriaMetrics' counters restart with it

    def close(self) -> None:
        self.bridge.stop()
        self.mq.stop()
        self.vm.stop()

    async def stream(self, pub: Publisher, stop: asyncio.Event) -> None:
        """Submit the numbered stream at ``rate`` points/s until ``stop``."""
        chunk = max(1, int(self.args.rate / 50))
        t0 = time.monotonic()
        sent = 0
        while not stop.is_set():
            pub.submit([stream_record(NODE, self.next_i + k) for k in range(chunk)])
            self.next_i += chunk
            sent += chunk
            self.max_outbox = max(self.max_outbox, len(pub.outbox))
            await asyncio.sleep(max(0.0, t0 + sent / self.args.rate - time.monotonic()))

    def mark(self) -> int:
        """The last seq submitted so far (seq = index + 1)."""
        return self.next_i

    async def wait_stored(self, upto: int, name: str, t_restart: float) -> None:
        """Poll until every seq <= upto is stored; record the catch-up time after a restart."""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            seqs = await asyncio.to_thread(stored_seqs, self.vm, NODE)
            if len({s for s in seqs if s <= upto}) >= upto:
                self.catch_up[name] = time.monotonic() - t_restart
                return
            await asyncio.sleep(0.5)
        self.catch_up[name] = float("nan")

    async def scenario(self, name: str, action) -> None:  # noqa: ANN001
        first = self.mark() + 1
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        t_restart = await action()
        await self.wait_stored(self.mark(), name, t_restart)
        await asyncio.sleep(2)
        self.windows.append((name, first, self.mark()))
        print(f"    caught up {self.catch_up[name]:.1f} s after restart", flush=True)

    async def broker_outage(self) -> float:
        await asyncio.to_thread(self.mq.stop)
        await asyncio.sleep(self.args.broker_outage_s)
        await asyncio.to_thread(self.mq.start)
        return time.monotonic()

    async def db_outage(self) -> float:
        self.rows_before_restart += await asyncio.to_thread(_rows_inserted, self.vm)
        await asyncio.to_thread(self.vm.stop)
        await asyncio.sleep(self.args.db_outage_s)
        await asyncio.to_thread(self.vm.start)
        return time.monotonic()

    async def bridge_kills(self) -> float:
        rng = random.Random(1)
        for _ in range(self.args.kills):
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            self.bridge.kill()
            await asyncio.to_thread(self.bridge.start)
        return time.monotonic()

    async def bad_payloads(self) -> float:
        good = stream_record(NODE, 0)
        from telemetry import to_line

        line = to_line(good)
        bad = [
            b"not line protocol at all",
            b"\xff\xfe binary",
            line.replace(NODE, "mallory").encode(),
            line.replace("counts=0i", "counts=zero").encode(),
            (line + "\n").encode() * 40_000,  # > max_payload_bytes (1 MiB)
            b"",
        ] * 5
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="reliability-bad")
        c.connect("127.0.0.1", self.mq.port)
        c.loop_start()
        for payload in bad:
            c.publish(f"qnet/v1/{NODE}/telemetry/singles", payload, qos=1).wait_for_publish(10)
        c.loop_stop()
        c.disconnect()
        self.bad_sent = len(bad)
        await asyncio.sleep(1)
        return time.monotonic()


async def _main(run: Run) -> dict[str, object]:
    pub = Publisher(publisher_settings(run.tmp, run.mq, node=NODE))
    pub.start()
    stop = asyncio.Event()
    streamer = asyncio.create_task(run.stream(pub, stop))
    await asyncio.sleep(3)
    run.windows.append(("warm-up", 1, run.mark()))
    a = run.args
    await run.scenario(f"broker stopped {a.broker_outage_s:g} s", run.broker_outage)
    await run.scenario(f"database stopped {a.db_outage_s:g} s", run.db_outage)
    await run.scenario(f"bridge SIGKILLed x{a.kills} mid-stream", run.bridge_kills)
    await run.scenario("malformed/oversized/foreign payloads", run.bad_payloads)
    stop.set()
    await streamer
    drained = await pub.wait_drained(60)
    reconnects = pub.reconnects
    await pub.close()
    n = run.mark()
    await run.wait_stored(n, "end", time.monotonic())
    seqs = await asyncio.to_thread(stored_seqs, run.vm, NODE)
    return {"n": n, "seqs": seqs, "drained": drained, "reconnects": reconnects}


def _rows_inserted(vm: servers.Server) -> int:
    import urllib.request

    with urllib.request.urlopen(f"{vm.url}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(r'^vm_rows_inserted_total\{type="influx"\} (\d+)', text, re.M)
    return int(m.group(1)) if m else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=1000.0, help="points/s of the numbered stream")
    p.add_argument("--broker-outage-s", type=float, default=30.0)
    p.add_argument("--db-outage-s", type=float, default=60.0)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--no-write", action="store_true", help="print, do not update the doc")
    p.add_argument(
        "--only-faults",
        action="store_true",
        help="only the fault scenarios (storage, restart, command flood, channel and link"
        " outage, key store kill -9; about 4 min), printed",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="    %(levelname)s %(name)s: %(message)s")
    if args.only_faults:
        with tempfile.TemporaryDirectory(prefix="qnet-faults-") as d:
            res = run_storage_and_restart(Path(d))
        print(_faults_markdown(res))
        print(json.dumps(res))
        return 1 if _failed_faults(res) else 0
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qnet-reliability-") as d:
        run = Run(args, Path(d))
        try:
            res = asyncio.run(_main(run))
            rows_inserted = run.rows_before_restart + _rows_inserted(run.vm)
            log = run.bridge.text()
            bridge_alive = run.bridge.alive()
        finally:
            run.close()
    n = int(res["n"])  # type: ignore[arg-type]
    seqs: list[int] = res["seqs"]  # type: ignore[assignment]
    counts: dict[int, int] = {}
    for s in seqs:
        counts[s] = counts.get(s, 0) + 1
    table = []
    for name, first, last in run.windows:
        want = range(first, last + 1)
        lost = sum(1 for s in want if s not in counts)
        dup = sum(counts.get(s, 1) - 1 for s in want if s in counts)
        table.append((name, len(want), lost, dup, run.catch_up.get(name)))
    lost_total = sum(1 for s in range(1, n + 1) if s not in counts)
    dup_total = len(seqs) - len(counts)
    extra = sum(1 for s in counts if s > n or s < 1)
    figures = {
        "published": n,
        "stored_distinct": len(counts),
        "lost": lost_total,
        "stored_more_than_once": dup_total,
        "unexpected": extra,
        "points_written_incl_replays": rows_inserted // ROWS_PER_POINT,
        "replayed_points_overwritten": rows_inserted // ROWS_PER_POINT - len(counts),
        "publisher_reconnects": res["reconnects"],
        "publisher_outbox_peak_records": run.max_outbox,
        "bridge_write_failures_logged": log.count("failed ("),
        "bad_messages_sent": run.bad_sent,
        "bad_messages_dropped_logged": log.count("dropped message"),
        "bridge_alive_at_end": bridge_alive,
        "duration_s": round(time.monotonic() - t_start, 1),
    }
    ok = lost_total == 0 and dup_total == 0 and extra == 0 and bridge_alive
    ok = ok and figures["bad_messages_dropped_logged"] == run.bad_sent
    with tempfile.TemporaryDirectory(prefix="qnet-faults-") as d:
        faults = run_storage_and_restart(Path(d))
    md = _markdown(args, table, figures, ok) + _faults_markdown(faults)
    print(md)
    if not args.no_write:
        _write_doc(md)
        print(f"wrote {DOC}")
    print(json.dumps(figures))
    failed = _failed_faults(faults)
    return 0 if ok and not failed else 1


def _markdown(args: argparse.Namespace, table: list, figures: dict, ok: bool) -> str:
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, "
        f"Python {platform.python_version()}; stream {args.rate:g} points/s; command "
        "`.venv/bin/python -m benchmarks.reliability`. Verdict: "
        f"**{'zero lost, each stored once' if ok else 'FAILED'}**.",
        "",
        "| scenario | points published in window | lost | stored more than once | "
        "all stored again after restart (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, n, lost, dup, cu in table:
        cu_s = "" if cu is None else f"{cu:.1f}"
        lines.append(f"| {name} | {n} | {lost} | {dup} | {cu_s} |")
    lines += ["", "| figure | value |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in figures.items()]
    return "\n".join(lines)


def _write_doc(md: str) -> None:
    text = DOC.read_text() if DOC.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{md}\n{END}{tail}")


# -- storage faults and restarts (run after the stream above, or alone with --only) --------


async def _storage_fault(tmp: Path, rate: float, full_s: float) -> dict[str, object]:
    """The outbox's disk fills up mid-stream, then space returns (a 256 KiB tmpfs, enlarged).

    Counts at a subscriber of the real broker: records accepted by ``submit`` (stored or
    held in memory), refused, received (distinct), lost (accepted, never received), and the
    time from space returning to everything sent.
    """
    from telemetry import OutboxUnavailable
    from telemetry.testing import FilesystemUnavailable, fill, resize, small_filesystem

    disk = tmp / "small-disk"
    try:
        mounted = small_filesystem(disk, 256 * 1024)
        mounted.__enter__()
    except FilesystemUnavailable as exc:
        return {"skipped": str(exc)}
    mq = servers.start_mosquitto(tmp / "mosquitto-storage")
    got: set[int] = set()
    received = [0]

    def on_message(c, u, m) -> None:  # noqa: ANN001
        from telemetry import parse_lines

        for r in parse_lines(m.payload.decode()):
            if r.measurement == "singles":
                got.add(int(r.fields["counts"]))
                received[0] += 1

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="reliability-storage-sub")
    sub.on_message = on_message
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe(f"qnet/v1/{NODE}/telemetry/#", 1)
    sub.connect("127.0.0.1", mq.port)
    sub.loop_start()
    await asyncio.sleep(0.5)
    accepted: list[int] = []
    refused = 0
    i = 0
    said = logging.Handler(logging.ERROR)
    errors: list[str] = []
    said.emit = lambda r: errors.append(r.getMessage())  # type: ignore[method-assign]
    logging.getLogger("qnet.telemetry").addHandler(said)
    try:
        pub = Publisher(publisher_settings(disk, mq, node=NODE))
        task = pub.start()
        chunk = max(1, int(rate / 50))

        async def stream(seconds: float) -> None:
            nonlocal i, refused
            t0 = time.monotonic()
            sent = 0
            while time.monotonic() - t0 < seconds:
                recs = [stream_record(NODE, i + k) for k in range(chunk)]
                try:
                    pub.submit(recs)
                    accepted.extend(range(i, i + chunk))
                except OutboxUnavailable:
                    refused += chunk
                i += chunk
                sent += chunk
                await asyncio.sleep(max(0.0, t0 + sent / rate - time.monotonic()))

        await stream(2.0)
        await asyncio.to_thread(fill, disk / "filler")
        await stream(full_s)
        stalled_seen = pub.stalled
        health = pub.health()
        (disk / "filler").unlink()
        resize(disk, 16 * 2**20)
        t_space = time.monotonic()
        while (pub.stalled or pub.pending()) and time.monotonic() - t_space < 120:
            await asyncio.sleep(0.05)
        resume_s = time.monotonic() - t_space
        await stream(2.0)
        await pub.wait_drained(60)
        alive = not task.done()
        await pub.close()
        t_end = time.monotonic()
        while len(got & set(accepted)) < len(accepted) and time.monotonic() - t_end < 20:
            await asyncio.sleep(0.1)
    finally:
        sub.loop_stop()
        sub.disconnect()
        mq.stop()
        mounted.__exit__(None, None, None)
        logging.getLogger("qnet.telemetry").removeHandler(said)
    lost = len(set(accepted) - got)
    return {
        "records_submitted": i,
        "records_accepted": len(accepted),
        "records_refused": refused,
        "records_lost": lost,
        "records_received_more_than_once": received[0] - len(got),
        "publisher_stalled_while_full": stalled_seen,
        "stall_cause": str(health["error"]).rsplit(": ", 1)[-1],
        "error_lines_logged": len(errors),
        "max_held_in_memory": health["held"],
        "time_to_resume_after_space_returns_s": round(resume_s, 2),
        "publisher_alive_at_end": alive,
    }


def _restart(outage_s: float = 600.0, silent_reads: int = 5) -> dict[str, object]:
    """A daemon restart while the taggers keep counting: no fake window, one gap.

    The real ``Acquisition`` (``MergedTagSource`` + ``Windower``) reads a tagger that, as
    after the reported restart, first times out (no frame yet) and then delivers tags
    from ``outage_s`` on; then the same tagger drops out for 30 s mid-run (the source is
    reopened). Counted: windows published, windows without a tag, gaps reported.
    """
    import threading

    import numpy as np

    from coincidence import TagBatch
    from controller.acquisition import Acquisition, Windower
    from controller.merge import MergedTagSource
    from drivers import TagSource

    second = 10**12

    def batches(begin_s: float, end_s: float, seed: int) -> list[TagBatch]:
        rng = np.random.default_rng(seed)
        out, t = [], int(begin_s * second)
        while t < int(end_s * second):
            e = t + second // 4
            n = int(rng.poisson(5000))
            ts = np.sort(rng.integers(t, e, n)).astype(np.int64)
            out.append(TagBatch(ts, rng.integers(0, 4, n).astype(np.uint8), t, e))
            t = e
        return out

    class Tagger(TagSource):
        def __init__(self, silent: int, data: list[TagBatch]) -> None:
            self.silent, self.data = silent, list(data)

        @property
        def n_channels(self) -> int:
            return 4

        def read(self, timeout_s: float = 1.0) -> TagBatch | None:
            if self.silent:
                self.silent -= 1
                time.sleep(min(timeout_s, 0.02))
                return TagBatch.empty(0, 0)
            return self.data.pop(0) if self.data else None

    plan = [
        Tagger(silent_reads, batches(outage_s, outage_s + 5, 1)),
        Tagger(silent_reads, batches(outage_s + 35, outage_s + 40, 2)),
    ]
    windows, gaps = [], []
    done = threading.Event()

    def open_source() -> TagSource:
        if not plan:
            done.set()
            raise ConnectionError("end of the scenario")
        return MergedTagSource([plan.pop(0)], [0], 4)

    acq = Acquisition(
        open_source,
        Windower(4, 1.0, 1000),
        windows.append,
        read_timeout_s=0.05,
        backoff_s=(0.01, 0.02),
        on_gap=gaps.append,
    )
    t0 = time.monotonic()
    acq.start()
    done.wait(60)
    acq.stop()
    return {
        "measured_tag_time_s": 10.0,
        "windows_published": len(windows),
        "fake_windows_published": sum(1 for w in windows if not w.has_data),
        "windows_before_first_tag": sum(1 for w in windows if w.begin_ps < outage_s * second),
        "gaps_reported": len(gaps),
        "gap_spans_s": [round(g.duration_s, 3) for g in gaps],
        "wall_s": round(time.monotonic() - t0, 2),
    }


def run_storage_and_restart(tmp: Path, rate: float = 500.0, full_s: float = 10.0) -> dict:
    """The fault scenarios; figures keyed by scenario.

    Storage fault, daemon restart, a command flood, the classical channel through a
    20 ms / 10 Mbit/s / 1 % loss link with a 30 s outage (``benchmarks.bench_channel``),
    the whole QKD link engine through the same link (``benchmarks.bench_link``), and
    kill -9 of the key store's writers (:func:`key_store_kill_scenario`).
    """
    from benchmarks.bench_channel import reliability as channel_outage
    from benchmarks.bench_link import reliability as link_outage

    res: dict[str, dict[str, object]] = {
        "outbox disk full, then space returns": asyncio.run(_storage_fault(tmp, rate, full_s)),
        "daemon restart (tagger kept counting)": _restart(),
        "command flood (10 000 valid sets)": command_flood_scenario(tmp),
    }
    for mode, figures in channel_outage(30.0).items():
        res[f"classical channel, 30 s outage ({mode})"] = figures  # type: ignore[assignment]
    res["QKD link engine: 20 ms, 10 Mbit/s, 1 % loss, 30 s outage"] = link_outage(30.0)
    ks = key_store_kill_scenario(tmp)
    name = (
        f"{KEY_STORE_KILL} ({ks['kills_during_distillation']} during distillation, "
        f"{ks['kills_during_delivery']} during delivery)"
    )
    res[name] = ks
    return res


def _failed_faults(res: dict[str, dict[str, object]]) -> list[str]:
    """The fault scenarios that fail the run (exit code 1): the key store's kill -9."""
    failed = [n for n, f in res.items() if n.startswith(KEY_STORE_KILL) and not f["ok"]]
    for name in failed:
        print(f"FAILED: {name}", file=sys.stderr)
    return failed


def _faults_markdown(res: dict) -> str:
    lines = ["", "", "| fault scenario | figure | value |", "|---|---|---:|"]
    for name, figures in res.items():
        for k, v in figures.items():
            lines.append(f"| {name} | {k} | {_figure(v)} |")
    return "\n".join(lines)


def _figure(v: object) -> str:
    """A figure as a person reads it: floats to 4 significant digits, the rest as is."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def command_flood_scenario(tmp: Path, n: int = 10_000) -> dict[str, object]:
    """The command flood: ``n`` valid ``set`` requests as fast as mosquitto takes them.

    Against the in-process daemon and an emulated laser taking 30 ms per exchange, polled
    every 0.2 s for an interlock (``controller/testing/flood.py``). Figures: reply codes,
    requests answered zero or twice, device faults, the longest gap between interlock polls
    while the flood lasted, and aiomqtt's "pending publish calls" warnings. Healthy: no
    fault, every request answered once, no poll gap over 5 intervals, no warning.
    """
    from controller.testing.flood import command_flood

    r = command_flood(tmp / "command-flood", n=n, latency_s=0.03, poll_interval_s=0.2)
    r["ok"] = (
        r["faults"] == 0
        and r["unanswered"] == 0
        and r["answered_twice"] == 0
        and float(r["max_poll_gap_s"]) < 5 * 0.2
        and r["pending_publish_warnings"] == 0
    )
    return r


def key_store_kill_scenario(tmp: Path, kills: int = 20) -> dict[str, object]:
    """kill -9 of a process writing into the key store, ``kills`` times each way.

    During distillation (adding blocks) and during delivery (issuing keys), each child
    killed at a random point and the store reopened (``kms.testing.store_kill_scenario``,
    at most 60 s). Healthy (``ok``): no confirmed block lost, no key delivered twice,
    every delivered key marked used, every reopen clean.
    """
    from kms.testing import store_kill_scenario

    r = store_kill_scenario(tmp / "key-store-kill", kills, budget_s=60.0)
    summary = (
        f"{r['confirmed_blocks']} confirmed blocks, {r['confirmed_blocks_lost']} lost; "
        f"{r['keys_delivered']} keys delivered, {r['keys_delivered_twice']} twice"
    )
    return {"summary": summary, **r}


if __name__ == "__main__":
    sys.exit(main())
