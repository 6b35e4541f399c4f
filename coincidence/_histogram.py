"""Streaming correlation (start-stop, g2) histograms between two channels.

Every pair of a tag ``a`` on ``channel_a`` and a tag ``b`` on ``channel_b``
with ``dt = (t_b - t_a) - delay_ps`` in ``[-range_ps, +range_ps)`` adds one
count to the bin ``(dt + range_ps) // bin_width_ps``. As in the coincidence
counter, a pair is counted when the later of its two tags arrives, so the
histogram keeps only the tags of the last ``max(|delay_ps - range_ps|,
|delay_ps + range_ps|)`` picoseconds and is identical whatever way the stream
is cut into batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ._counter import MAX_DELAY_PS
from ._errors import CoincidenceError, TagBatchError
from ._tags import MAX_CHANNELS, TagBatch

MAX_BINS = 10_000_000
"""Largest accepted number of bins (``2 * range_ps / bin_width_ps``)."""


@dataclass(frozen=True)
class HistogramReport:
    """The histogram counted so far by a :class:`CorrelationHistogram`.

    Attributes:
        channel_a, channel_b: start and stop channels.
        bin_width_ps: bin width.
        range_ps: the histogram covers ``dt`` in ``[-range_ps, +range_ps)``.
        delay_ps: subtracted from ``t_b - t_a``.
        bin_edges_ps: int64 (n_bins + 1,), from ``-range_ps`` to ``+range_ps``.
        counts: int64 (n_bins,).
        duration_ps: measured time, the sum of the batches' ``end - begin``.
    """

    channel_a: int
    channel_b: int
    bin_width_ps: int
    range_ps: int
    delay_ps: int
    bin_edges_ps: np.ndarray
    counts: np.ndarray
    duration_ps: int

    @property
    def bin_centers_ps(self) -> np.ndarray:
        """Centre of each bin, picoseconds (float64)."""
        return 0.5 * (self.bin_edges_ps[:-1] + self.bin_edges_ps[1:])


@numba.njit(cache=True, nogil=True)
def _first_above(t: np.ndarray, i: int, edge: int) -> int:
    """First index ``>= i`` with ``t[index] > edge`` (``t`` sorted, ``t[i] <= edge``).

    Galloping search: O(log d) for an answer ``d`` places on, so a run of tags that fall in
    one bin costs a logarithm, not its length.
    """
    n = t.shape[0]
    lo = i  # t[lo] <= edge
    step = 1
    hi = i + 1
    while hi < n and t[hi] <= edge:
        lo = hi
        step *= 2
        hi = lo + step
    if hi > n:
        hi = n
    while lo + 1 < hi:  # t[lo] <= edge, and hi == n or t[hi] > edge
        mid = (lo + hi) >> 1
        if t[mid] <= edge:
            lo = mid
        else:
            hi = mid
    return hi


@numba.njit(cache=True, nogil=True)
def _histogram_pairs(
    ta: np.ndarray,
    cum_a: np.ndarray,
    tb: np.ndarray,
    wb: np.ndarray,
    first_new_a: int,
    first_new_b: int,
    lo_ps: int,
    bin_ps: int,
    counts: np.ndarray,
) -> None:
    """Add pairs with ``x = t_b - t_a - lo_ps`` in ``[0, n_bins * bin_ps)`` to bin ``x // bin_ps``.

    Both arrays are sorted, each entry standing for several tags of one time: ``wb`` the
    weights of ``tb``, ``cum_a`` the prefix sums of ``ta``'s weights (``ta.size + 1``). A
    pair counts only if at least one of its tags is new (index ``>= first_new_a`` in
    ``ta`` or ``>= first_new_b`` in ``tb``). For each ``b`` entry the ``a`` entries of one
    bin are found by a galloping search and added as a difference of prefix sums, so the
    cost is O(entries x occupied bins x log), never O(pairs).
    """
    n_bins = counts.shape[0]
    width = n_bins * bin_ps
    na = ta.shape[0]
    start = 0
    for j in range(tb.shape[0]):
        tj = tb[j] - lo_ps  # x = tj - t_a: pairs need tj - width < t_a <= tj
        while start < na and ta[start] <= tj - width:
            start += 1
        i = start if j >= first_new_b else max(start, first_new_a)
        wj = wb[j]
        while i < na and ta[i] <= tj:
            k = (tj - ta[i]) // bin_ps
            e = _first_above(ta, i, tj - k * bin_ps)  # a entries of bin k: [i, e)
            if k < n_bins:  # always true (tj - ta < width); guards the write
                counts[k] += wj * (cum_a[e] - cum_a[i])
            i = e


def merge_equal_times(t: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Merge equal timestamps of a sorted array: (distinct times, summed weights)."""
    if t.shape[0] == 0:
        return t.astype(np.int64, copy=True), np.empty(0, np.int64)
    starts = np.flatnonzero(np.concatenate(([True], t[1:] != t[:-1])))
    if w is None:
        w = np.ones(t.shape[0], np.int64)
    return t[starts].copy(), np.add.reduceat(w, starts).astype(np.int64)


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise CoincidenceError(f"CorrelationHistogram: {name} must be an integer, got {value!r}")
    return int(value)


class CorrelationHistogram:
    """Histogram of ``(t_b - t_a) - delay_ps`` over all (a, b) pairs within ``+-range_ps``.

    Args:
        channel_a: start channel.
        channel_b: stop channel (must differ from ``channel_a``).
        bin_width_ps: bin width (> 0); ``range_ps`` must be a multiple of it.
        range_ps: half width of the histogram (> 0): ``dt`` in ``[-range_ps, +range_ps)``.
        delay_ps: subtracted from each ``t_b - t_a`` (``|delay_ps| <= 1 ms``).
    """

    def __init__(
        self,
        channel_a: int,
        channel_b: int,
        bin_width_ps: int,
        range_ps: int,
        delay_ps: int = 0,
    ) -> None:
        a = _check_int("channel_a", channel_a)
        b = _check_int("channel_b", channel_b)
        width = _check_int("bin_width_ps", bin_width_ps)
        rng = _check_int("range_ps", range_ps)
        delay = _check_int("delay_ps", delay_ps)
        for name, ch in (("channel_a", a), ("channel_b", b)):
            if not 0 <= ch < MAX_CHANNELS:
                raise CoincidenceError(
                    f"CorrelationHistogram: {name} must be in 0..{MAX_CHANNELS - 1}, got {ch}"
                )
        if a == b:
            raise CoincidenceError(
                f"CorrelationHistogram: channel_a and channel_b must differ, both are {a}"
            )
        if width <= 0:
            raise CoincidenceError(f"CorrelationHistogram: bin_width_ps must be > 0, got {width}")
        if rng <= 0:
            raise CoincidenceError(f"CorrelationHistogram: range_ps must be > 0, got {rng}")
        if rng % width:
            raise CoincidenceError(
                f"CorrelationHistogram: range_ps {rng} is not a multiple of bin_width_ps {width}"
            )
        if 2 * rng // width > MAX_BINS:
            raise CoincidenceError(
                f"CorrelationHistogram: {2 * rng // width} bins (2 * range_ps / bin_width_ps) "
                f"exceed the limit of {MAX_BINS}"
            )
        if abs(delay) > MAX_DELAY_PS:
            raise CoincidenceError(
                f"CorrelationHistogram: |delay_ps| = {abs(delay)} ps exceeds {MAX_DELAY_PS} ps"
            )
        if rng > MAX_DELAY_PS:
            raise CoincidenceError(
                f"CorrelationHistogram: range_ps {rng} ps exceeds {MAX_DELAY_PS} ps (1 ms)"
            )
        self.channel_a, self.channel_b = a, b
        self.bin_width_ps, self.range_ps, self.delay_ps = width, rng, delay
        self.horizon_ps = max(abs(delay - rng), abs(delay + rng))
        """Largest raw-time distance between the two tags of a counted pair."""
        self.reset()

    def reset(self) -> None:
        """Forget all counts and held tags."""
        self._counts = np.zeros(2 * self.range_ps // self.bin_width_ps, np.int64)
        self._duration_ps = 0
        self._last_end: int | None = None
        self._tail_a = np.empty(0, np.int64)
        self._tail_b = np.empty(0, np.int64)
        self._tail_wa = np.empty(0, np.int64)
        self._tail_wb = np.empty(0, np.int64)

    @property
    def held_back_tags(self) -> int:
        """Tags of both channels kept from earlier batches."""
        return int(self._tail_wa.sum() + self._tail_wb.sum())

    def process(self, batch: TagBatch) -> None:
        """Add the pairs completed by ``batch`` (which begins at or after the previous end)."""
        if not isinstance(batch, TagBatch):
            raise TagBatchError(
                f"CorrelationHistogram.process: expected a TagBatch, got {type(batch).__name__}"
            )
        if self._last_end is not None and batch.begin_ps < self._last_end:
            raise TagBatchError(
                f"CorrelationHistogram: batch begins at {batch.begin_ps} ps, before the "
                f"previous batch's end {self._last_end} ps: batches must not overlap in time"
            )
        ch = batch.channels
        # equal timestamps share one weighted entry (tail times are all before the batch)
        new_a, new_wa = merge_equal_times(batch.timestamps[ch == self.channel_a])
        new_b, new_wb = merge_equal_times(batch.timestamps[ch == self.channel_b])
        ta = np.concatenate([self._tail_a, new_a])
        tb = np.concatenate([self._tail_b, new_b])
        wa = np.concatenate([self._tail_wa, new_wa])
        wb = np.concatenate([self._tail_wb, new_wb])
        cum_a = np.zeros(wa.shape[0] + 1, np.int64)
        np.cumsum(wa, out=cum_a[1:])
        _histogram_pairs(
            ta,
            cum_a,
            tb,
            wb,
            self._tail_a.shape[0],
            self._tail_b.shape[0],
            self.delay_ps - self.range_ps,
            self.bin_width_ps,
            self._counts,
        )
        self._duration_ps += batch.duration_ps
        self._last_end = batch.end_ps
        cut = batch.end_ps - self.horizon_ps
        ka = int(np.searchsorted(ta, cut, side="left"))
        kb = int(np.searchsorted(tb, cut, side="left"))
        self._tail_a, self._tail_wa = ta[ka:].copy(), wa[ka:].copy()
        self._tail_b, self._tail_wb = tb[kb:].copy(), wb[kb:].copy()

    def result(self) -> HistogramReport:
        """The histogram of everything processed so far (the state is not changed)."""
        edges = np.arange(-self.range_ps, self.range_ps + 1, self.bin_width_ps, dtype=np.int64)
        return HistogramReport(
            channel_a=self.channel_a,
            channel_b=self.channel_b,
            bin_width_ps=self.bin_width_ps,
            range_ps=self.range_ps,
            delay_ps=self.delay_ps,
            bin_edges_ps=edges,
            counts=self._counts.copy(),
            duration_ps=int(self._duration_ps),
        )
