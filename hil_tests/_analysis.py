"""Analyses the checks share: histograms and coincidence matrices (the core's), CAR, fits.

The coincidence matrix and the correlation histogram come from ``coincidence/``.
The CAR here is *measured*: coincidences of Alice's merged channels with Bob's
in the window, over accidentals counted in windows offset by
``accidental_offsets_ps`` (not estimated from singles), so stray correlations
show up in it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coincidence import CoincidenceCounter, CorrelationHistogram, TagBatch


def count_within(ta: np.ndarray, tb: np.ndarray, lo_ps: int, hi_ps: int) -> int:
    """Number of pairs with ``lo_ps <= tb - ta < hi_ps`` (both sorted)."""
    if ta.size == 0 or tb.size == 0:
        return 0
    hi = np.searchsorted(tb, ta + hi_ps, side="left")
    lo = np.searchsorted(tb, ta + lo_ps, side="left")
    return int((hi - lo).sum())


def difference_histogram(
    batch: TagBatch, channel_a: int, channel_b: int, center_ps: int, half_range_ps: int, bin_ps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of ``t_b - t_a - center`` (the core's CorrelationHistogram); (edges, counts)."""
    half = max(bin_ps, (half_range_ps // bin_ps) * bin_ps)
    hist = CorrelationHistogram(channel_a, channel_b, bin_ps, half, delay_ps=center_ps)
    hist.process(batch)
    rep = hist.result()
    return rep.bin_edges_ps[:-1] + center_ps, rep.counts


@dataclass(frozen=True)
class CoincidenceStats:
    """Coincidences of Alice's merged channels with Bob's over one capture."""

    duration_s: float
    singles_alice_hz: float
    singles_bob_hz: float
    coincidences_hz: float
    accidentals_hz: float

    @property
    def car(self) -> float:
        """Coincidence-to-accidental ratio (true coincidences over accidentals)."""
        if self.accidentals_hz <= 0:
            return float("inf")
        return (self.coincidences_hz - self.accidentals_hz) / self.accidentals_hz


def merged_times(batch: TagBatch, channels: list[int], delays_ps: np.ndarray) -> np.ndarray:
    """The given channels' tags, each minus its delay, merged and sorted."""
    mask = np.isin(batch.channels, channels)
    t = batch.timestamps[mask] - delays_ps[batch.channels[mask]]
    return np.sort(t)


def coincidence_stats(
    batch: TagBatch,
    alice: list[int],
    bob: list[int],
    delays_ps: np.ndarray,
    window_ps: int,
    accidental_offsets_ps: tuple[int, int],
) -> CoincidenceStats:
    """Coincidences in ``+-window/2`` and accidentals averaged over offset windows."""
    dur = batch.duration_ps * 1e-12
    ta = merged_times(batch, alice, delays_ps)
    tb = merged_times(batch, bob, delays_ps)
    half = window_ps // 2
    coinc = count_within(ta, tb, -half, window_ps - half)
    lo, hi = accidental_offsets_ps
    background = count_within(ta, tb, lo, hi) + count_within(ta, tb, -hi, -lo)
    n_windows = 2 * (hi - lo) / window_ps
    return CoincidenceStats(
        dur, ta.size / dur, tb.size / dur, coinc / dur, background / n_windows / dur
    )


def coincidence_matrix(
    batch: TagBatch, n_channels: int, delays_ps: np.ndarray, window_ps: int
) -> np.ndarray:
    """n x n coincidence matrix within ``+-window/2`` (the core's CoincidenceCounter)."""
    counter = CoincidenceCounter(n_channels, window_ps, delays_ps)
    counter.process(batch)
    return counter.result().coincidences


@dataclass(frozen=True)
class LinearFit:
    """``y = slope * x + intercept`` with its coefficient of determination."""

    slope: float
    intercept: float
    r2: float
    max_rel_residual: float


def linear_fit(x: np.ndarray, y: np.ndarray) -> LinearFit:
    """Least-squares line through (x, y) and how well it fits."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    slope, intercept = np.polyfit(x, y, 1)
    pred = slope * x + intercept
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
    scale = np.maximum(np.abs(y), 1e-300)
    return LinearFit(float(slope), float(intercept), r2, float(np.max(np.abs(y - pred) / scale)))
