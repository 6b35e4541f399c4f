"""The emulated testbed's tag generator: simulated tags per wall-clock second on one core.

Target: at least 20 M tags of simulated time per wall-clock second (e.g. 1 s of a
10 Mcps link generated in under 0.5 s). Measured end to end through
the in-process ``TestbedTagSource`` (10 ms batches: state sync, tables, the Numba
kernel, TagBatch), on the configs/testbed.yaml link with the pump turned up to
~12 Mcps of singles.

Baseline timed in the same run: a plain-numpy generator of the same model
(Poisson pair count, sorted uniform times, class by ``searchsorted``, Gaussian
jitter, dark counts, an exact vectorized dead-time filter iterated until no
chain is left, and a final stable ``argsort``), on the same rates, without
afterpulses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks._harness import Row, best_of

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "testbed.yaml"
SIM_S = 0.5
PUMP_A = 0.52  # 0.25 W pump -> 2.5e7 pairs/s -> ~15 Mcps of singles


def _testbed():  # noqa: ANN202 - bench-local helper
    from drivers.sim.testbed import Testbed, TestbedConfig

    cfg = TestbedConfig.load(CONFIG).model_copy(update={"speed": 0.0})
    tb = Testbed(cfg)
    tb.set_pump(PUMP_A)
    return tb


def _numpy_generate(rng: np.random.Generator, duration_ps: int, tables: tuple, tb) -> int:  # noqa: ANN001
    """The same model in plain numpy (no afterpulses); returns the number of tags."""
    rate, cum, ch_a, ch_b, dark = tables
    delays = tb.generator.delays_ps
    jitter = tb.generator.jitter_ps
    dead = tb.generator.dead_time_ps
    n = rng.poisson(rate * duration_ps * 1e-12)
    tp = np.sort(rng.integers(0, duration_ps, n))
    k = np.minimum(np.searchsorted(cum, rng.random(n), side="right"), len(cum) - 1)
    ts, cs = [], []
    for chs in (ch_a[k], ch_b[k]):
        m = chs >= 0
        c = chs[m]
        ts.append(
            tp[m] + delays[c] + np.rint(rng.normal(0.0, 1.0, c.size) * jitter[c]).astype(np.int64)
        )
        cs.append(c)
    for c in range(8):
        nd = rng.poisson(dark[c] * duration_ps * 1e-12)
        ts.append(rng.integers(0, duration_ps, nd))
        cs.append(np.full(nd, c))
    t = np.concatenate(ts)
    c = np.concatenate(cs)
    order = np.lexsort((t, c))
    t, c = t[order], c[order]
    keep = np.ones(t.size, bool)
    while True:  # drop the first too-early click of every chain, until no chain is left
        idx = np.flatnonzero(keep)
        gap = np.diff(t[idx])
        same = c[idx][1:] == c[idx][:-1]
        bad = same & (gap < dead[c[idx][1:]])
        if not bad.any():
            break
        first = bad & ~np.concatenate([[False], bad[:-1]])
        keep[idx[1:][first]] = False
    t, c = t[keep], c[keep]
    order = np.argsort(t, kind="stable")
    return int(t[order].size)


def run() -> list[Row]:
    tb = _testbed()
    tb.advance(10**10)  # compile / warm up
    duration_ps = round(SIM_S * 1e12)
    counts: list[int] = []

    src = tb.tag_source("both", speed=0.0)  # what a consumer reads: one batch per chunk
    n_reads = round(SIM_S / tb.config.chunk_s)

    def fast() -> None:
        counts.append(sum(len(src.read()) for _ in range(n_reads)))

    t_fast = best_of(fast, repeat=3)
    n_tags = counts[-1]
    rate_fast = n_tags / t_fast
    tables = tb._tables()
    rng = np.random.default_rng(1)
    base_counts: list[int] = []
    t_base = best_of(
        lambda: base_counts.append(_numpy_generate(rng, duration_ps, tables, tb)), repeat=2
    )
    rate_base = base_counts[-1] / t_base
    singles_hz = n_tags / SIM_S
    return [
        Row(
            name=f"testbed tag generation, {singles_hz / 1e6:.1f} Mcps link",
            value=rate_fast / 1e6,
            unit="M tags/s (wall)",
            target=">= 20 M tags/s",
            ok=rate_fast >= 20e6,
            baseline=rate_base / 1e6,
            baseline_name="plain numpy generator of the same model",
            notes=(
                f"{n_tags} tags for {SIM_S} s simulated in {t_fast:.3f} s "
                f"({SIM_S / t_fast:.2f} s simulated per wall s); steps of "
                f"{tb.config.step_s * 1e3:g} ms read as {n_reads} batches; numpy baseline "
                f"{base_counts[-1]} tags in {t_base:.3f} s"
            ),
        )
    ]
