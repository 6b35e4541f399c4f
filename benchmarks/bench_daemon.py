"""The daemon's acquisition keeping up with 10 M tags/s in real time, 1 s windows.

Stream: 8 channels, ~10 M tags per second (1 M pairs/s spread BBM92-like over the
Alice-Bob detector pairs, i.e. 2 M paired tags, plus 1 Mcps noise per detector),
Bob's side 5 us later. One second of it is generated once and replayed, shifted by
a whole second each cycle, by a source *paced to the wall clock* in 10 ms batches
(what a time tagger delivers). The daemon's acquisition thread (``Acquisition`` +
``Windower``: coincidences, QBER, key rate) turns it into 1 s windows, and each
window's telemetry records are built and appended to a real SQLite outbox, as in
the daemon.

Rows: CPU seconds per second of stream (target < 1: one core keeps up), the
process's CPU use and resident memory, missed windows (a window delivered more
than one window late), and RSS growth over a short soak. Baseline: the same
paced replay with no analysis (the source's own cost), timed in the same run.

The 30-minute soak is a separate command (not in ``make bench``)::

    .venv/bin/python -m benchmarks.bench_daemon --soak 1800
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from benchmarks._harness import Row
from coincidence import RoleMap, TagBatch, generate_pairs
from controller._cli_sample import bbm92_pair_channels
from controller.acquisition import Acquisition, Windower, WindowResult, window_records
from drivers import TagSource

RATE_NOTE = "10 M tags/s, 8 channels, 1 s windows, 10 ms batches"
ROLES = RoleMap(alice={"H": 0, "V": 1, "D": 2, "A": 3}, bob={"H": 4, "V": 5, "D": 6, "A": 7})
DELAYS_PS = [0, 0, 0, 0, 5_000_000, 5_000_000, 5_000_000, 5_000_000]
BATCH_PS = 10_000_000_000  # 10 ms


def make_second() -> list[TagBatch]:
    """One second of the stream, cut into 10 ms batches."""
    batch = generate_pairs(
        duration_ps=10**12,
        pair_rate_hz=1e6,
        noise_rate_hz=1e6,
        n_channels=8,
        pair_channels=bbm92_pair_channels(),
        delays_ps=DELAYS_PS,
        jitter_ps=50.0,
        seed=3,
    )
    return batch.split_at(range(BATCH_PS, 10**12, BATCH_PS))


class PacedReplay(TagSource):
    """Replays one second of batches forever, shifted each cycle, paced to the wall clock."""

    def __init__(self, second: list[TagBatch], duration_s: float) -> None:
        self.second = second
        self.duration_s = duration_s
        self.k = 0
        self.t0: float | None = None

    @property
    def n_channels(self) -> int:
        return 8

    def read(self, timeout_s: float = 1.0) -> TagBatch | None:
        if self.t0 is None:
            self.t0 = time.monotonic()
        cycle, idx = divmod(self.k, len(self.second))
        b = self.second[idx]
        shift = cycle * 10**12
        end_s = (b.end_ps + shift) * 1e-12
        if end_s > self.duration_s:
            return None
        wait = self.t0 + end_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.k += 1
        return TagBatch(b.timestamps + shift, b.channels, b.begin_ps + shift, b.end_ps + shift)


def run_paced(
    duration_s: float, analyse: bool = True, second: list[TagBatch] | None = None
) -> dict:
    """Run the acquisition (or the bare replay) for ``duration_s``; return the figures."""
    second = second or make_second()
    tmp = tempfile.TemporaryDirectory()
    from telemetry import Outbox, telemetry_topic

    outbox = Outbox(Path(tmp.name) / "outbox.sqlite", 1_000_000, "drop_oldest")
    proc = psutil.Process()
    # constant-size bookkeeping, so that the soak's RSS measures the daemon, not the benchmark
    rss = np.full(int(duration_s) + 64, np.nan)
    acc = {"windows": 0, "missed": 0, "max_lag_s": 0.0, "proc_sum": 0.0, "proc_max": 0.0}
    acc.update(tags=0, qber_z=None)
    done = threading.Event()
    src = PacedReplay(second, duration_s)

    if not analyse:
        t0 = time.monotonic()
        c0 = proc.cpu_times()
        n = 0
        while (b := src.read()) is not None:
            n += len(b)
        c1 = proc.cpu_times()
        wall = time.monotonic() - t0
        return {
            "cpu_s_per_s": (c1.user + c1.system - c0.user - c0.system) / wall,
            "tags": n,
        }

    def on_window(r: WindowResult) -> None:
        lag = time.monotonic() - (src.t0 + r.end_ps * 1e-12)
        recs = window_records(r, "bench", "alice-bob", ROLES)
        outbox.append([(telemetry_topic("bench", x.measurement), x) for x in recs])
        if len(outbox) > 10_000:  # keep the outbox near its working size, in small steps
            outbox.remove([s for s, _, _ in outbox.peek(500)])
        k = acc["windows"]
        if k < rss.size:
            rss[k] = proc.memory_info().rss / 1e6
        summary = r.summary()
        acc["windows"] = k + 1
        acc["missed"] += lag > 1.0
        acc["max_lag_s"] = max(acc["max_lag_s"], lag)
        acc["proc_sum"] += summary["processing_s"]
        acc["proc_max"] = max(acc["proc_max"], summary["processing_s"])
        acc["tags"] += summary["tags"]
        acc["qber_z"] = summary["qber_z"]

    def on_state(s: str) -> None:
        if s.startswith("faulted"):
            done.set()

    opened = []

    def open_source() -> TagSource:
        if opened:
            raise RuntimeError("replay finished")
        opened.append(1)
        return src

    acq = Acquisition(open_source, Windower(8, 1.0, 1000, ROLES, DELAYS_PS), on_window, on_state)
    c0 = proc.cpu_times()
    t0 = time.monotonic()
    acq.start()
    done.wait(duration_s + 30)
    wall = time.monotonic() - t0
    c1 = proc.cpu_times()
    acq.stop()
    outbox.close()
    tmp.cleanup()
    cpu = c1.user + c1.system - c0.user - c0.system
    windows = acc["windows"]
    expected = int(duration_s)
    samples = [float(x) for x in rss[: min(windows, rss.size)]]
    return {
        "windows": windows,
        "expected_windows": expected,
        "missed": int(acc["missed"]) + max(0, expected - windows),
        "max_lag_s": acc["max_lag_s"] if windows else float("nan"),
        "cpu_s_per_s": cpu / wall,
        "window_cpu_s_max": acc["proc_max"] if windows else float("nan"),
        "window_cpu_s_mean": acc["proc_sum"] / windows if windows else float("nan"),
        "rss_mb_start": samples[min(2, len(samples) - 1)] if samples else float("nan"),
        "rss_mb_end": samples[-1] if samples else float("nan"),
        "rss_mb_max": max(samples) if samples else float("nan"),
        "rss_mb_per_10min_second_half": _slope_per_10min(samples),
        "tags_per_window": acc["tags"] / windows if windows else 0.0,
        "qber_z": acc["qber_z"],
    }


def _slope_per_10min(rss_mb: list[float]) -> float:
    """Least-squares RSS slope over the second half of a run, MB per 10 min (one sample/window).

    The first half is warm-up (allocator arenas, SQLite page cache, the outbox filling to
    its bound); a leak shows as a steady positive slope after it, a plateau as ~0.
    """
    half = rss_mb[len(rss_mb) // 2 :]
    if len(half) < 10:
        return float("nan")
    return float(np.polyfit(np.arange(len(half)), half, 1)[0]) * 600.0


def run(duration_s: float = 20.0) -> list[Row]:
    """The ``make bench`` rows (a 20 s paced run; the 30 min soak is separate)."""
    second = make_second()
    base = run_paced(5.0, analyse=False, second=second)
    f = run_paced(duration_s, second=second)
    notes = f"{RATE_NOTE}; {f['tags_per_window']:.3g} tags per window, QBER_Z {f['qber_z']}"
    growth = f["rss_mb_end"] - f["rss_mb_start"]
    return [
        Row(
            "daemon acquisition CPU per second of stream",
            f["window_cpu_s_mean"],
            "s/s",
            target="< 1 (one core keeps up)",
            ok=f["window_cpu_s_max"] < 1.0,
            notes=f"analysis thread CPU per 1 s window, max {f['window_cpu_s_max']:.3f}; {notes}",
        ),
        Row(
            "daemon process CPU (replay + acquisition + records)",
            f["cpu_s_per_s"],
            "cores",
            baseline=base["cpu_s_per_s"],
            baseline_name="paced replay alone",
            notes=RATE_NOTE,
        ),
        Row(
            f"daemon missed windows in {duration_s:.0f} s",
            f["missed"],
            "windows",
            target="0",
            ok=f["missed"] == 0,
            notes=f"{f['windows']} delivered, max lag {f['max_lag_s']:.3f} s after the window end",
        ),
        Row(
            "daemon resident memory",
            f["rss_mb_max"],
            "MB",
            notes=f"RSS growth over the run {growth:+.1f} MB (start {f['rss_mb_start']:.0f} MB)",
            extra={"rss_growth_mb": growth},
        ),
    ]


def main() -> None:
    """``python -m benchmarks.bench_daemon [--soak SECONDS]``: print the figures as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--soak", type=float, default=20.0, help="seconds to run (1800 = 30 min)")
    args = ap.parse_args()
    print(json.dumps(run_paced(args.soak), indent=2))


if __name__ == "__main__":
    main()
