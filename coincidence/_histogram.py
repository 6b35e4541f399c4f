"""Streaming correlation (start-stop, g2) histograms between two channels, and g2.

Every pair of a tag ``a`` on ``channel_a`` and a tag ``b`` on ``channel_b``
with ``dt = (t_b - t_a) - delay_ps`` in ``[-range_ps, +range_ps)`` adds one
count to the bin ``(dt + range_ps) // bin_width_ps``. As in the coincidence
counter, a pair is counted when the later of its two tags arrives, so the
histogram keeps only the tags of the last ``max(|delay_ps - range_ps|,
|delay_ps + range_ps|)`` picoseconds and is identical whatever way the stream
is cut into batches.

g2 conventions (Poisson normalisation). For a histogram of ``C(tau)`` pairs per bin
of width ``dtau`` over a measurement of ``T`` with ``N_a`` and ``N_b`` singles,
``g2(tau) = C(tau) T / (N_a N_b dtau)``: uncorrelated (Poisson) streams give 1 at
every lag. Bins are half-open, so a bin of ``dtau`` ps spans exactly ``dtau``
integer lags. The 1-sigma uncertainty is the Poisson one of ``C``,
``g2 / sqrt(C)`` (``C`` floored at 1 so an empty bin still has an error bar); the
singles' own uncertainty (relative ``1/sqrt(N)``, far smaller) is left out, and
``T`` is taken as the whole measured time (the ``|tau| / T`` edge correction is
negligible for lags far below ``T``).

The heralded g2(0) follows Grangier, Roger & Aspect, Europhys. Lett. 1, 173
(1986): for herald tags on ``H`` and the two outputs ``A``, ``B`` of a beam
splitter, ``g2_h(0) = N_H N_HAB / (N_HA N_HB)``, where for each herald ``a`` and
``b`` are the numbers of ``A`` and ``B`` tags within the window around it,
``N_HA = sum a``, ``N_HB = sum b`` and ``N_HAB = sum a b``. A classical (Poisson)
field gives 1, a single photon 0. Its uncertainty propagates the Poisson errors of
the four counts (``N_HAB`` floored at 1).
"""

from __future__ import annotations

import math
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
        singles_a, singles_b: tags seen on each channel (the g2 normalisation).
    """

    channel_a: int
    channel_b: int
    bin_width_ps: int
    range_ps: int
    delay_ps: int
    bin_edges_ps: np.ndarray
    counts: np.ndarray
    duration_ps: int
    singles_a: int = 0
    singles_b: int = 0

    @property
    def bin_centers_ps(self) -> np.ndarray:
        """Centre of each bin, picoseconds (float64)."""
        return 0.5 * (self.bin_edges_ps[:-1] + self.bin_edges_ps[1:])

    def g2(self) -> G2Curve:
        """Poisson-normalised ``g2(tau) = C T / (N_a N_b dtau)`` with 1-sigma errors.

        See the module docstring for the convention. Raises CoincidenceError when a
        channel saw no tags or nothing was measured (g2 undefined).
        """
        if self.duration_ps <= 0 or self.singles_a <= 0 or self.singles_b <= 0:
            raise CoincidenceError(
                f"g2 undefined: {self.singles_a} tags on channel {self.channel_a}, "
                f"{self.singles_b} on channel {self.channel_b} over {self.duration_ps} ps"
            )
        scale = float(self.duration_ps) / (
            float(self.singles_a) * float(self.singles_b) * float(self.bin_width_ps)
        )
        g2 = self.counts * scale
        err = np.sqrt(np.maximum(self.counts, 1).astype(np.float64)) * scale
        return G2Curve(
            channel_a=self.channel_a,
            channel_b=self.channel_b,
            tau_ps=self.bin_centers_ps,
            g2=g2,
            g2_err=err,
            bin_width_ps=self.bin_width_ps,
            counts=self.counts.copy(),
        )


@dataclass(frozen=True)
class G2Curve:
    """Normalised second-order correlation ``g2(tau)`` between two channels.

    Attributes:
        channel_a, channel_b: start and stop channels.
        tau_ps: bin centres, ``t_b - t_a - delay``, ps.
        g2: ``C T / (N_a N_b dtau)`` per bin (1 for uncorrelated streams).
        g2_err: 1-sigma Poisson uncertainty of each bin.
        bin_width_ps: ``dtau``.
        counts: the raw pair counts ``C``.
    """

    channel_a: int
    channel_b: int
    tau_ps: np.ndarray
    g2: np.ndarray
    g2_err: np.ndarray
    bin_width_ps: int
    counts: np.ndarray


@dataclass(frozen=True)
class G2Zero:
    """A g2(0) estimate with its 1-sigma uncertainty and the counts behind it.

    Attributes:
        g2: the estimate.
        sigma: 1-sigma uncertainty (Poisson errors propagated).
        heralded: True for the three-fold ``N_H N_HAB / (N_HA N_HB)``.
        counts: the counts used (``n_a, n_b, n_ab, lags, duration_ps`` or
            ``n_h, n_ha, n_hb, n_hab``).
    """

    g2: float
    sigma: float
    heralded: bool
    counts: dict[str, int]


def g2_zero(n_a: int, n_b: int, n_ab: int, window_lags: int, duration_ps: int) -> G2Zero:
    """Two-fold g2(0) from coincidences in a window: ``N_AB T / (N_A N_B L)``.

    ``L`` is the number of integer lags the window spans (see
    ``coincidence.window_lags``); the uncertainty is Poisson on ``N_AB`` (floored at 1).
    """
    if n_a <= 0 or n_b <= 0 or duration_ps <= 0 or window_lags <= 0:
        raise CoincidenceError(
            f"g2(0) undefined: N_A = {n_a}, N_B = {n_b}, T = {duration_ps} ps, L = {window_lags}"
        )
    scale = float(duration_ps) / (float(n_a) * float(n_b) * float(window_lags))
    counts = {"n_a": n_a, "n_b": n_b, "n_ab": n_ab, "lags": window_lags, "duration_ps": duration_ps}
    return G2Zero(n_ab * scale, math.sqrt(max(n_ab, 1)) * scale, False, counts)


def heralded_g2_zero(n_h: int, n_ha: int, n_hb: int, n_hab: int) -> G2Zero:
    """Heralded ``g2_h(0) = N_H N_HAB / (N_HA N_HB)`` (Grangier, Roger & Aspect 1986).

    Uncertainty: Poisson errors of the four counts propagated to first order,
    ``sigma^2 = g2^2 (1/N_H + 1/N_HA + 1/N_HB) + (N_H / (N_HA N_HB))^2 max(N_HAB, 1)``.
    """
    if n_h <= 0 or n_ha <= 0 or n_hb <= 0:
        raise CoincidenceError(
            f"heralded g2(0) undefined: N_H = {n_h}, N_HA = {n_ha}, N_HB = {n_hb} "
            "(no heralded counts on one output?)"
        )
    k = float(n_h) / (float(n_ha) * float(n_hb))
    g2 = k * n_hab
    var = g2 * g2 * (1.0 / n_h + 1.0 / n_ha + 1.0 / n_hb) + k * k * max(n_hab, 1)
    counts = {"n_h": n_h, "n_ha": n_ha, "n_hb": n_hb, "n_hab": n_hab}
    return G2Zero(g2, math.sqrt(var), True, counts)


@numba.njit(cache=True, nogil=True)
def _herald_counts(sh: np.ndarray, sa: np.ndarray, sb: np.ndarray, half_ps: int) -> np.ndarray:
    """``[N_HA, N_HB, N_HAB]`` for heralds ``sh`` against ``sa``, ``sb`` (shifted, sorted).

    Two pointers per output channel: O(tags), however many tags fall in a window.
    """
    out = np.zeros(3, np.int64)
    la = ha = lb = hb = 0
    na, nb = sa.shape[0], sb.shape[0]
    for i in range(sh.shape[0]):
        x = sh[i]
        while la < na and sa[la] < x - half_ps:
            la += 1
        while ha < na and sa[ha] <= x + half_ps:
            ha += 1
        while lb < nb and sb[lb] < x - half_ps:
            lb += 1
        while hb < nb and sb[hb] <= x + half_ps:
            hb += 1
        a = ha - la
        b = hb - lb
        out[0] += a
        out[1] += b
        out[2] += a * b
    return out


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


@numba.njit(cache=True, nogil=True)
def _difference_histogram_runs(
    ta: np.ndarray,
    tb: np.ndarray,
    cum_b: np.ndarray,
    lo: int,
    bin_ps: int,
    counts: np.ndarray,
    sums: np.ndarray,
) -> None:
    """Every ``tb[j] - ta[i]`` in ``[lo, lo + n_bins * bin_ps)``, by runs of one bin.

    For each ``a`` tag the ``b`` tags of one bin are found by a galloping search and
    added at once: ``counts[k]`` gets their number, ``sums[k]`` the sum of ``d - lo``
    from prefix sums of ``tb`` (``cum_b``, int64 with wrap-around: differences are
    exact whenever the result fits). Cost O(a tags x occupied bins x log), not pairs.
    """
    n_bins = counts.shape[0]
    nb = tb.shape[0]
    j0 = 0
    for i in range(ta.shape[0]):
        base = ta[i] + lo
        while j0 < nb and tb[j0] < base:
            j0 += 1
        j = j0
        end = base + n_bins * bin_ps
        while j < nb and tb[j] < end:
            k = (tb[j] - base) // bin_ps
            e = _first_above(tb, j, base + (k + 1) * bin_ps - 1)
            run = e - j
            counts[k] += run
            sums[k] += float((cum_b[e] - cum_b[j]) - run * base)
            j = e


def difference_histogram(
    ta: np.ndarray, tb: np.ndarray, lo_ps: int, bin_ps: int, n_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of all differences ``t_b - t_a`` in ``[lo_ps, lo_ps + n_bins * bin_ps)``.

    Both inputs sorted int64 ps. Returns ``(counts, sums)``: pairs per bin and the
    sum of ``d - lo_ps`` over each bin's pairs (for centroids). Linear in the tags
    times the occupied bins whatever the number of pairs (a burst of equal timestamps
    costs a logarithm per tag), so a delay search cannot be made quadratic.
    """
    a = np.ascontiguousarray(ta, dtype=np.int64)
    b = np.ascontiguousarray(tb, dtype=np.int64)
    if bin_ps <= 0 or n_bins <= 0:
        raise CoincidenceError(
            f"difference_histogram: bin_ps {bin_ps} and n_bins {n_bins} must be > 0"
        )
    counts = np.zeros(n_bins, np.int64)
    sums = np.zeros(n_bins, np.float64)
    cum = np.zeros(b.shape[0] + 1, np.int64)
    np.cumsum(b, out=cum[1:])  # may wrap: only differences are used
    _difference_histogram_runs(a, b, cum, int(lo_ps), int(bin_ps), counts, sums)
    return counts, sums


def merge_equal_times(t: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Merge equal timestamps of a sorted array: (distinct times, summed weights)."""
    if t.shape[0] == 0:
        return t.astype(np.int64, copy=True), np.empty(0, np.int64)
    starts = np.flatnonzero(np.concatenate(([True], t[1:] != t[:-1])))
    if w is None:
        w = np.ones(t.shape[0], np.int64)
    return t[starts].copy(), np.add.reduceat(w, starts).astype(np.int64)


def _check_int(name: str, value: object, where: str = "CorrelationHistogram") -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise CoincidenceError(f"{where}: {name} must be an integer, got {value!r}")
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
        self._singles_a = 0
        self._singles_b = 0
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
        sel_a = batch.timestamps[ch == self.channel_a]
        sel_b = batch.timestamps[ch == self.channel_b]
        self._singles_a += int(sel_a.shape[0])
        self._singles_b += int(sel_b.shape[0])
        new_a, new_wa = merge_equal_times(sel_a)
        new_b, new_wb = merge_equal_times(sel_b)
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
            singles_a=self._singles_a,
            singles_b=self._singles_b,
        )


class HeraldedG2Counter:
    """Stream the counts of the heralded g2(0): heralds ``H``, beam-splitter outputs ``A``, ``B``.

    Args:
        herald, channel_a, channel_b: three different channels.
        window_ps: full window around each herald; ``A`` or ``B`` tags with
            ``2 |dt| <= window_ps`` (delay-corrected) count for it.
        delays_ps: ``(d_H, d_A, d_B)`` subtracted from each channel's timestamps.

    A herald is counted once every tag that could fall in its window has arrived; the
    tags kept between batches span at most the window plus the delay spread, so the
    counts do not depend on how the stream is cut. :meth:`result` also counts the
    heralds still pending (as if the stream ended there), without changing the state.
    """

    def __init__(
        self,
        herald: int,
        channel_a: int,
        channel_b: int,
        window_ps: int,
        delays_ps: tuple[int, int, int] = (0, 0, 0),
    ) -> None:
        named = (("herald", herald), ("channel_a", channel_a), ("channel_b", channel_b))
        chans = [_check_int(n, v, "HeraldedG2Counter") for n, v in named]
        if len(set(chans)) != 3 or not all(0 <= c < MAX_CHANNELS for c in chans):
            raise CoincidenceError(
                f"HeraldedG2Counter: herald, channel_a and channel_b must be three different "
                f"channels in 0..{MAX_CHANNELS - 1}, got {chans}"
            )
        w = _check_int("window_ps", window_ps, "HeraldedG2Counter")
        if w <= 0:
            raise CoincidenceError(f"HeraldedG2Counter: window_ps must be > 0, got {w}")
        d = [_check_int("delays_ps", x, "HeraldedG2Counter") for x in delays_ps]
        if len(d) != 3 or any(abs(x) > MAX_DELAY_PS for x in d):
            raise CoincidenceError(
                f"HeraldedG2Counter: delays_ps needs 3 delays within +-{MAX_DELAY_PS} ps, got {d}"
            )
        self.herald, self.channel_a, self.channel_b = chans
        self.window_ps = w
        self.delays_ps = (d[0], d[1], d[2])
        h = w // 2
        self._half = h
        # raw time after / before a herald where its partners can be
        self._reach_fwd = max(0, h + max(d[1], d[2]) - d[0])
        self._reach_back = max(0, h + d[0] - min(d[1], d[2]))
        self.reset()

    def reset(self) -> None:
        """Forget all counts and held tags."""
        self._n = np.zeros(4, np.int64)  # N_H, N_HA, N_HB, N_HAB
        self._h = np.empty(0, np.int64)
        self._a = np.empty(0, np.int64)
        self._b = np.empty(0, np.int64)
        self._last_end: int | None = None

    def _count(self, th: np.ndarray, ta: np.ndarray, tb: np.ndarray) -> np.ndarray:
        dh, da, db = self.delays_ps
        c = _herald_counts(th - dh, ta - da, tb - db, self._half)
        return np.array([th.shape[0], c[0], c[1], c[2]], np.int64)

    def process(self, batch: TagBatch) -> None:
        """Add the batch's tags; count the heralds whose windows are complete."""
        if not isinstance(batch, TagBatch):
            raise TagBatchError(
                f"HeraldedG2Counter.process: expected a TagBatch, got {type(batch).__name__}"
            )
        if self._last_end is not None and batch.begin_ps < self._last_end:
            raise TagBatchError(
                f"HeraldedG2Counter: batch begins at {batch.begin_ps} ps, before the previous "
                f"batch's end {self._last_end} ps: batches must not overlap in time"
            )
        ts, ch = batch.timestamps, batch.channels
        th = np.concatenate([self._h, ts[ch == self.herald]])
        ta = np.concatenate([self._a, ts[ch == self.channel_a]])
        tb = np.concatenate([self._b, ts[ch == self.channel_b]])
        end = batch.end_ps
        k = int(np.searchsorted(th, end - self._reach_fwd, side="left"))
        self._n += self._count(th[:k], ta, tb)
        self._h = th[k:].copy()
        first = int(self._h[0]) if self._h.shape[0] else end
        keep = first - self._reach_back
        self._a = ta[np.searchsorted(ta, keep, side="left") :].copy()
        self._b = tb[np.searchsorted(tb, keep, side="left") :].copy()
        self._last_end = end

    def counts(self) -> dict[str, int]:
        """``n_h, n_ha, n_hb, n_hab`` so far (pending heralds included; state unchanged)."""
        n = self._n + self._count(self._h, self._a, self._b)
        return {"n_h": int(n[0]), "n_ha": int(n[1]), "n_hb": int(n[2]), "n_hab": int(n[3])}

    def result(self) -> G2Zero:
        """The heralded g2(0) of everything so far (CoincidenceError if undefined)."""
        return heralded_g2_zero(**self.counts())
