"""Reference-free clock sync of two free-running taggers from photon timing alone.

Two taggers on their own quartz clocks see the two photons of each pair: tagger
B's reading of a pair is ``t_b = t_a + offset + ppm 1e-6 t_a`` (plus phase
noise). ``acquire_clock`` finds the offset (up to +-1 s) and the frequency
difference (up to +-100 ppm) with no shared reference; ``ClockTracker`` keeps
the lock while running, follows drift and phase noise, and re-acquires when it
is lost. Pure numpy + numba, no I/O: the link code feeds it tags.

Acquisition (the idea of qcrypto's ``pfind`` / S-Fifteen's ``fpfind``, read
for ideas only: a coarse cross-correlation, then finer and finer): over the
whole data span ``T``,

1. **Frequency grid, coarse correlation.** For each hypothesis ``k`` on a grid
   of step ``delta = max_ppm / 8`` over ``+-max_ppm``, B's tags are mapped by
   ``k`` (about the data's middle) and the linear (zero-padded, so nothing
   folds over) FFT cross-correlation of the binned streams is computed over
   lags ``+-max_offset_ps`` in bins of ``delta T / 2``: within the grid's
   half-step the residual drift smears the peak over at most one bin. Only A's
   tags whose every searched partner time lies inside B's data are used, so
   the accidental background is flat over the lags. The peak's
   signal-to-noise is about ``r_pair / sqrt(r_a r_b delta)`` whatever ``T``: at
   100 kcps singles and 5 % heralding, ``delta = 12.5 ppm`` gives ~11 sigma.
   The best peak over all hypotheses is judged by ``find_delay``'s window scan
   with the look-elsewhere count of all hypotheses; without a significant peak
   the step is halved (``ACQUIRE_LEVELS`` times).
2. **Zoom.** Around the best cell, 5 hypotheses 4x finer in frequency and a
   4x finer bin over a few of the previous bins of lag, until the bin is
   ``REFINE_BIN_PS`` (the peak grows 2x in significance a level).
3. **Refinement.** B mapped by that ``(offset, k)``; ``track_drift`` over
   ``REFINE_WINDOWS`` windows fits the residual offset and drift (bins
   narrowing 16x a pass) down to ``find_delay``'s maximum-likelihood fit at
   the statistical limit; the result is composed with the coarse map.
   Uncertainties come from that weighted line fit (see ``ClockDrift``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ._delay import (
    DIRECT_PAIRS_MAX,
    ClockDrift,
    _as_times,
    _coarse_direct,
    _fit_line,
    _fold_histogram,
    _judge,
    _next_pow2,
    _Peak,
    _scan_peak,
    find_delay,
    track_drift,
)
from ._errors import CoincidenceError, NoSignificantPeakError

#: First frequency-grid step is ``max_ppm / 8``; halved up to this many times more.
ACQUIRE_LEVELS = 1
#: Largest FFT of the coarse correlation (bins); the bin grows to stay below it.
ACQUIRE_FFT_MAX = 1 << 23
#: Finest first frequency-grid step, ppm (its bin, ``step * T / 2``, keeps the FFT ~2^20).
GRID_STEP_MIN_PPM = 2.0
#: Windows ``track_drift`` refines the coarse lock with.
REFINE_WINDOWS = 4
#: The frequency grid zooms in until its bin is at most this (then ``track_drift`` takes over).
REFINE_BIN_PS = 4_000_000
#: Fewest lag bins either side of the previous level's peak a zoom level searches.
MIN_ZOOM_BINS = 64


@dataclass(frozen=True)
class ClockLock:
    """Tagger B's clock against A's: ``t_b - t_a = offset_ps + ppm 1e-6 (t_a - reference_ps)``.

    Attributes:
        offset_ps: ``t_b - t_a`` at A-clock time ``reference_ps``.
        offset_uncertainty_ps: its 1-sigma uncertainty.
        ppm: B's rate relative to A's minus one, parts per million.
        ppm_uncertainty: its 1-sigma uncertainty, ppm.
        reference_ps: A-clock time the offset is quoted at (the data's middle).
        significance: the coarse peak's significance, background sigmas.
        drift: the same relation as a ``ClockDrift`` (its ``to_clock_a`` maps
            B's tags onto A's clock).
    """

    offset_ps: float
    offset_uncertainty_ps: float
    ppm: float
    ppm_uncertainty: float
    reference_ps: float
    significance: float
    drift: ClockDrift = field(repr=False)

    def offset_at(self, t_a_ps: float) -> float:
        """Offset ``t_b - t_a`` (ps) at A-clock time ``t_a_ps``."""
        return self.offset_ps + self.ppm * 1e-6 * (float(t_a_ps) - self.reference_ps)

    def to_clock_a(self, times_b_ps: np.ndarray) -> np.ndarray:
        """Tagger B's timestamps mapped onto A's clock."""
        return self.drift.to_clock_a(times_b_ps)


def _lock_from(
    fit_map: ClockDrift, resid: ClockDrift, reference_ps: float, sig: float
) -> ClockLock:
    """A ``ClockLock`` at ``reference_ps`` from a known map and the residual fit on top of it."""
    total = fit_map.compose(resid)
    k1 = 1.0 + fit_map.drift_ppm * 1e-6
    # the residual's windows, refitted about the reference: offset and slope uncertainties there
    at_ref = _fit_line(
        resid.window_times_ps - reference_ps, resid.window_offsets_ps, resid.window_uncertainties_ps
    )
    return ClockLock(
        offset_ps=float(total.offset_at(reference_ps)),
        offset_uncertainty_ps=k1 * at_ref.offset0_uncertainty_ps,
        ppm=total.drift_ppm,
        ppm_uncertainty=k1 * at_ref.drift_uncertainty_ppm,
        reference_ps=float(reference_ps),
        significance=float(sig),
        drift=total,
    )


def _hypothesis_map(ppm: float, t_ref_ps: float, lag_ps: float = 0.0) -> ClockDrift:
    """The map of B onto A for drift ``ppm`` about ``t_ref_ps`` and offset ``lag_ps`` there."""
    k = ppm * 1e-6
    return ClockDrift(lag_ps * (1.0 + k) - k * t_ref_ps, ppm, np.zeros(0), np.zeros(0), 0.0)


def _correlate(ta: np.ndarray, tb: np.ndarray, k_max: int, bin_ps: int) -> np.ndarray | None:
    """Correlation counts of ``tb - ta`` over lags ``-k_max..k_max`` bins; None if too little data.

    Direct pair differences when few fall in range; otherwise the linear
    (zero-padded, so nothing folds over) FFT correlation of the binned streams,
    with only A's tags whose every searched partner time lies inside B's data,
    so that the accidental background is flat over the lags.
    """
    half = k_max * bin_ps
    span = max(1, int(max(ta[-1], tb[-1])) - int(min(ta[0], tb[0])))
    if ta.size * float(tb.size) * (2 * half + bin_ps) / span <= DIRECT_PAIRS_MAX:
        return _coarse_direct(ta, tb, k_max, bin_ps).counts
    ia0 = int(np.searchsorted(ta, int(tb[0]) + half))
    ia1 = int(np.searchsorted(ta, int(tb[-1]) - half, side="right"))
    if ia1 - ia0 < 2:
        return None
    sa = ta[ia0:ia1]
    t0 = int(sa[0]) - (k_max + 1) * bin_ps
    n_fft = _next_pow2((int(sa[-1]) - t0) // bin_ps + 2 * k_max + 4)
    sb = tb[np.searchsorted(tb, t0) : np.searchsorted(tb, t0 + n_fft * bin_ps)]
    ha = np.zeros((1, n_fft), np.float64)
    hb = np.zeros((1, n_fft), np.float64)
    _fold_histogram(sa, t0, bin_ps, n_fft, 1 << 62, ha)
    _fold_histogram(sb, t0, bin_ps, n_fft, 1 << 62, hb)
    corr = np.fft.irfft(np.conj(np.fft.rfft(ha[0])) * np.fft.rfft(hb[0]), n=n_fft)
    lin = np.concatenate((corr[n_fft - k_max :], corr[: k_max + 1]))
    return np.maximum(np.rint(lin), 0.0)


@dataclass(frozen=True)
class _Level:
    """The best peak of one frequency-grid level."""

    peak: _Peak
    p_any: float
    ok: bool
    ppm: float
    lag_ps: float
    bin_ps: int


def _grid_level(
    ta: np.ndarray,
    tb: np.ndarray,
    t_ref: int,
    grid: np.ndarray,
    lag_ps: float,
    k_max: int,
    bin_ps: int,
    min_significance: float,
    false_alarm: float,
) -> _Level | None:
    """Correlate A with B mapped by each frequency of ``grid``, lags ``lag_ps +- k_max`` bins.

    The best peak over all hypotheses, judged with the look-elsewhere count of all
    of them; None when the streams are too short for the lag range.
    """
    scans: list[tuple[list[_Peak], float]] = []
    n_pos_all = 0
    for ppm in grid:
        tb_h = _hypothesis_map(float(ppm), t_ref, lag_ps).to_clock_a(tb)
        c = _correlate(ta, tb_h, k_max, bin_ps)
        if c is None:
            return None
        peaks, n_pos = _scan_peak(c, k_max, k_max)
        n_pos_all += n_pos
        scans.append((peaks, float(ppm)))
    best: _Level | None = None
    for peaks, ppm in scans:
        pk, p_any, ok = _judge(peaks, n_pos_all, min_significance, false_alarm)
        if best is None or (ok, pk.sig) > (best.ok, best.peak.sig):
            lag = lag_ps + (pk.centre - k_max) * bin_ps
            best = _Level(pk, p_any, ok, ppm, lag, bin_ps)
    return best


def acquire_clock(
    times_a_ps: np.ndarray,
    times_b_ps: np.ndarray,
    *,
    max_offset_ps: float = 1e12,
    max_ppm: float = 100.0,
    min_significance: float = 6.0,
    false_alarm: float = 1e-3,
    resolution_ps: int = 100,
) -> ClockLock:
    """Find B's clock offset and frequency difference against A's from two tag streams.

    ``times_a_ps`` / ``times_b_ps``: sorted tags of each tagger on its own clock,
    covering (roughly) the same stretch of true time, longer than twice
    ``max_offset_ps``; B's offset within ``+-max_offset_ps``, its frequency
    within ``+-max_ppm``. ``resolution_ps`` is the finest coarse bin of the
    refinement (the fit below it is at the statistical limit anyway). See the
    module docstring for the method. Raises ``NoSignificantPeakError`` when no
    hypothesis gives a significant peak (more data, or more heralding, is
    needed), ``CoincidenceError`` on bad input.
    """
    ta = _as_times(times_a_ps, "times_a_ps")
    tb = _as_times(times_b_ps, "times_b_ps")
    if not (math.isfinite(max_offset_ps) and max_offset_ps > 0):
        raise CoincidenceError(f"max_offset_ps must be positive, got {max_offset_ps}")
    if not (math.isfinite(max_ppm) and 0 <= max_ppm < 1e4):
        raise CoincidenceError(f"max_ppm must be in [0, 10000), got {max_ppm}")
    if int(resolution_ps) <= 0:
        raise CoincidenceError(f"resolution_ps must be positive, got {resolution_ps}")
    if ta.size < 2 or tb.size < 2:
        raise NoSignificantPeakError(
            f"cannot acquire the clock: stream a has {ta.size} tags and stream b has {tb.size}"
        )
    res = int(resolution_ps)
    t_ref = (int(ta[0]) + int(ta[-1])) // 2
    span = int(ta[-1]) - int(ta[0]) + 1
    max_off = int(max_offset_ps)
    if span <= 2 * max_off:
        raise NoSignificantPeakError(
            f"cannot acquire the clock: {span * 1e-12:.3g} s of data is too short for an "
            f"offset range of +-{max_off} ps (the streams must overlap by more than "
            "twice it); feed a longer stretch or narrow max_offset_ps"
        )
    # stage 1: a coarse grid over the whole frequency range, step halved until a peak stands out
    # grid step: an eighth of the range, but no finer than the bin a ~2^20-point FFT allows
    delta = max(max_ppm / 8.0, GRID_STEP_MIN_PPM) if max_ppm > 0 else 0.0
    tried: list[str] = []
    found: _Level | None = None
    for _level in range(ACQUIRE_LEVELS + 1):
        n_hyp = 2 * max(1, round(max_ppm / delta)) + 1 if delta > 0 else 1
        grid = np.linspace(-max_ppm, max_ppm, n_hyp)
        if n_hyp > 1:
            delta = float(grid[1] - grid[0])
            bin_ps = max(res, int(0.5 * delta * 1e-6 * span))
        else:  # no frequency search: the bin is set by the FFT size alone
            bin_ps = max(res, span // (1 << 20))
        k_max = -(-max_off // bin_ps)
        while _next_pow2(span // bin_ps + 2 * k_max + 4) > ACQUIRE_FFT_MAX:
            bin_ps *= 2
            k_max = -(-max_off // bin_ps)
        lvl = _grid_level(ta, tb, t_ref, grid, 0.0, k_max, bin_ps, min_significance, false_alarm)
        if lvl is None:
            raise NoSignificantPeakError(
                f"cannot acquire the clock: {span * 1e-12:.3g} s of data is too short for an "
                f"offset range of +-{max_off} ps (the streams must overlap by more than "
                "twice it); feed a longer stretch or narrow max_offset_ps"
            )
        if lvl.ok:
            found = lvl
            break
        tried.append(
            f"{n_hyp} frequencies {delta:g} ppm apart at {bin_ps} ps bins: best "
            f"{lvl.peak.sig:.1f} sigma at {lvl.ppm:+g} ppm (chance {lvl.p_any:.2g})"
        )
        if delta <= 0:
            break
        delta *= 0.5
    if found is None:
        raise NoSignificantPeakError(
            f"no clock lock: {ta.size} tags on a and {tb.size} on b over {span * 1e-12:.3g} s, "
            f"offset +-{max_off} ps, frequency +-{max_ppm:g} ppm; tried "
            + "; ".join(tried)
            + f" (threshold {min_significance:g} sigma, false_alarm {false_alarm:g}). More "
            "data, more heralding, or a narrower offset/frequency range is needed"
        )
    sig = found.peak.sig
    # stage 2: zoom in, 4x finer in frequency and bin per level, around the best cell
    while found.bin_ps > REFINE_BIN_PS and delta > 0:
        prev = found
        delta /= 4.0
        bin_ps = max(res, int(0.5 * delta * 1e-6 * span))
        k_max = max(MIN_ZOOM_BINS, -(-2 * max(1, prev.peak.width) * prev.bin_ps // bin_ps))
        grid = np.asarray(prev.ppm + delta * np.arange(-2, 3), np.float64)
        lvl = _grid_level(
            ta, tb, t_ref, grid, prev.lag_ps, k_max, bin_ps, min_significance, false_alarm
        )
        if lvl is None or not lvl.ok:
            break
        found = lvl
    coarse = _hypothesis_map(found.ppm, t_ref, found.lag_ps)
    search = int(4 * max(1, found.peak.width) * found.bin_ps + delta * 1e-6 * span)
    return _refine(ta, tb, coarse, search, delta, res, sig, min_significance)


def _refine(
    ta: np.ndarray,
    tb: np.ndarray,
    coarse: ClockDrift,
    search_ps: int,
    max_residual_ppm: float,
    resolution_ps: int,
    sig: float,
    min_significance: float,
) -> ClockLock:
    """Residual offset and drift on top of ``coarse`` with ``track_drift``; the lock at mid-span."""
    tb_m = coarse.to_clock_a(tb)
    span = int(ta[-1]) - int(ta[0]) + 1
    window = max(1, -(-span // REFINE_WINDOWS))
    try:
        resid = track_drift(
            ta,
            tb_m,
            window_ps=window,
            max_delay_ps=max(search_ps, 2 * resolution_ps),
            resolution_ps=resolution_ps,
            max_drift_ppm=max_residual_ppm,
            min_significance=min_significance,
        )
    except CoincidenceError as exc:
        raise NoSignificantPeakError(
            f"clock peak found ({sig:.1f} sigma) but the refinement over {REFINE_WINDOWS} "
            f"windows failed: {exc}"
        ) from None
    return _lock_from(coarse, resid, 0.5 * (int(ta[0]) + int(ta[-1])), sig)


@dataclass(frozen=True)
class ClockState:
    """What ``ClockTracker.feed`` says about the clocks after a feed.

    Attributes:
        state: ``"acquiring"`` (no lock yet), ``"locked"``, or ``"lost"`` (the lock
            was dropped on this feed; acquisition restarts with the next one).
        offset_ps: ``t_b - t_a`` at A-clock ``reference_ps`` (nan unless locked).
        offset_uncertainty_ps: its 1-sigma uncertainty.
        ppm: B's frequency relative to A's, ppm (nan unless locked).
        ppm_uncertainty: its 1-sigma uncertainty.
        reference_ps: A-clock time of ``offset_ps`` (the end of the last window).
        misses: consecutive tracking windows without a significant peak.
        windows: tracking windows measured since the lock.
        lock: the current lock (None unless locked).
    """

    state: str
    offset_ps: float = math.nan
    offset_uncertainty_ps: float = math.nan
    ppm: float = math.nan
    ppm_uncertainty: float = math.nan
    reference_ps: float = math.nan
    misses: int = 0
    windows: int = 0
    lock: ClockLock | None = field(default=None, repr=False)


class ClockTracker:
    """Acquire, track and re-acquire the clock relation of two taggers, fed tags as they come.

    ``feed(times_a, times_b)`` takes each tagger's next tags (sorted, on its own
    clock; the two feeds need not cover the same stretch of true time). While
    acquiring, tags are buffered until they span ``acquire_span_ps`` and
    ``acquire_clock`` is tried (again after every further half span, on the
    latest ``2 * acquire_span_ps`` at most). Once locked, every ``window_ps`` of A's
    clock the offset is measured with ``find_delay`` within ``+-track_range_ps``
    of the prediction, at the statistical limit, and the line is refitted over
    the last ``track_windows`` windows (so it follows drift and phase noise;
    uncertainties from the weighted fit). After ``max_misses`` consecutive
    windows without a significant peak the lock is declared lost and
    acquisition starts afresh. Sans-I/O: no clocks, threads or sockets.
    """

    def __init__(
        self,
        *,
        max_offset_ps: float = 1e12,
        max_ppm: float = 100.0,
        acquire_span_ps: int = 10 * 10**12,
        window_ps: int = 10**12,
        track_range_ps: int = 20_000,
        track_windows: int = 16,
        max_misses: int = 3,
        min_significance: float = 6.0,
        resolution_ps: int = 100,
    ) -> None:
        for name, v in (
            ("acquire_span_ps", acquire_span_ps),
            ("window_ps", window_ps),
            ("track_range_ps", track_range_ps),
            ("resolution_ps", resolution_ps),
        ):
            if int(v) <= 0:
                raise CoincidenceError(f"ClockTracker: {name} must be positive, got {v}")
        if int(track_windows) < 2 or int(max_misses) < 1:
            raise CoincidenceError(
                f"ClockTracker: track_windows must be >= 2 and max_misses >= 1, got "
                f"{track_windows} and {max_misses}"
            )
        self.max_offset_ps = float(max_offset_ps)
        self.max_ppm = float(max_ppm)
        self.acquire_span_ps = int(acquire_span_ps)
        self.window_ps = int(window_ps)
        self.track_range_ps = int(track_range_ps)
        self.track_windows = int(track_windows)
        self.max_misses = int(max_misses)
        self.min_significance = float(min_significance)
        self.resolution_ps = int(resolution_ps)
        self._a = np.zeros(0, np.int64)
        self._b = np.zeros(0, np.int64)
        self._lock: ClockLock | None = None
        self._next_window = 0
        self._times: list[float] = []
        self._offsets: list[float] = []
        self._sigmas: list[float] = []
        self._misses = 0
        self._retry_at = -(1 << 62)
        self.acquisitions = 0
        self.losses = 0

    # -- buffers
    def _append(self, times_a_ps: np.ndarray, times_b_ps: np.ndarray) -> None:
        a = _as_times(times_a_ps, "times_a_ps")
        b = _as_times(times_b_ps, "times_b_ps")
        for name, old, new in (("times_a_ps", self._a, a), ("times_b_ps", self._b, b)):
            if old.size and new.size and new[0] < old[-1]:
                raise CoincidenceError(
                    f"ClockTracker.feed: {name} starts at {int(new[0])} ps, before the previous "
                    f"feed's last tag at {int(old[-1])} ps: feed each tagger's tags in order"
                )
        self._a = np.concatenate((self._a, a)) if self._a.size else a.copy()
        self._b = np.concatenate((self._b, b)) if self._b.size else b.copy()

    def feed(self, times_a_ps: np.ndarray, times_b_ps: np.ndarray) -> ClockState:
        """Add each tagger's next tags; acquire or track as far as the data allows."""
        self._append(times_a_ps, times_b_ps)
        if self._lock is None:
            return self._acquire()
        return self._track()

    def _acquire(self) -> ClockState:
        if self._a.size < 2 or self._b.size < 2:
            return ClockState("acquiring")
        span = int(self._a[-1]) - int(self._a[0])
        if span < self.acquire_span_ps or int(self._a[-1]) < self._retry_at:
            return ClockState("acquiring")
        # a failed attempt is retried after half a span of new data, not on every feed
        self._retry_at = int(self._a[-1]) + self.acquire_span_ps // 2
        # keep at most two spans of A, and B's tags that can pair with them
        lo = int(self._a[-1]) - 2 * self.acquire_span_ps
        self._a = self._a[np.searchsorted(self._a, lo) :]
        self._b = self._b[np.searchsorted(self._b, lo - int(self.max_offset_ps)) :]
        try:
            lock = acquire_clock(
                self._a,
                self._b,
                max_offset_ps=self.max_offset_ps,
                max_ppm=self.max_ppm,
                min_significance=self.min_significance,
                resolution_ps=self.resolution_ps,
            )
        except NoSignificantPeakError:
            return ClockState("acquiring")
        self.acquisitions += 1
        self._lock = lock
        self._times, self._offsets, self._sigmas = [], [], []
        t_end = float(self._a[-1])
        self._next_window = int(t_end) + 1
        # the acquisition's own windows start the tracking fit
        d = lock.drift
        for t, y, e in zip(
            d.window_times_ps, d.window_offsets_ps, d.window_uncertainties_ps, strict=False
        ):
            self._add(float(t), float(y), float(e))
        self._misses = 0
        self._a = self._a[np.searchsorted(self._a, self._next_window) :]
        return self._state("locked")

    def _add(self, t: float, y: float, e: float) -> None:
        self._times.append(t)
        self._offsets.append(y)
        self._sigmas.append(e)
        del self._times[: -self.track_windows]
        del self._offsets[: -self.track_windows]
        del self._sigmas[: -self.track_windows]

    def _state(self, state: str) -> ClockState:
        lock = self._lock
        if lock is None:
            return ClockState(state, misses=self._misses)
        return ClockState(
            state,
            offset_ps=lock.offset_ps,
            offset_uncertainty_ps=lock.offset_uncertainty_ps,
            ppm=lock.ppm,
            ppm_uncertainty=lock.ppm_uncertainty,
            reference_ps=lock.reference_ps,
            misses=self._misses,
            windows=len(self._times),
            lock=lock,
        )

    def _refit(self, reference_ps: float, sig: float) -> None:
        """Refit the line through the tracked windows (raw B - A offsets) at ``reference_ps``."""
        t = np.asarray(self._times) - reference_ps
        fit = _fit_line(t, np.asarray(self._offsets), np.asarray(self._sigmas))
        k = fit.drift_ppm * 1e-6
        drift = ClockDrift(
            fit.offset0_ps - k * reference_ps,
            fit.drift_ppm,
            np.asarray(self._times),
            np.asarray(self._offsets),
            fit.residual_rms_ps,
            math.nan,
            fit.drift_uncertainty_ppm,
            np.asarray(self._sigmas),
        )
        self._lock = ClockLock(
            offset_ps=fit.offset0_ps,
            offset_uncertainty_ps=fit.offset0_uncertainty_ps,
            ppm=fit.drift_ppm,
            ppm_uncertainty=fit.drift_uncertainty_ppm,
            reference_ps=reference_ps,
            significance=sig,
            drift=drift,
        )

    def _track(self) -> ClockState:
        lock = self._lock
        assert lock is not None
        state = "locked"
        while True:
            w0 = self._next_window
            w1 = w0 + self.window_ps
            if self._a.size == 0 or int(self._a[-1]) < w1:
                break
            # B must have reached the window's end on A's clock (plus the search range)
            b_end = lock.offset_at(w1) + w1 + self.track_range_ps
            if self._b.size == 0 or int(self._b[-1]) < b_end:
                break
            ia = np.searchsorted(self._a, w1)
            wa = self._a[:ia]
            wa = wa[wa >= w0]
            b_lo = int(lock.offset_at(w0) + w0 - 2 * self.track_range_ps)
            b_hi = int(b_end + self.track_range_ps)
            wb = self._b[np.searchsorted(self._b, b_lo) : np.searchsorted(self._b, b_hi)]
            mid = 0.5 * (w0 + w1)
            try:
                # B mapped by the lock: the residual peak sits near zero, unsmeared by the drift
                est = find_delay(
                    wa,
                    lock.to_clock_a(wb),
                    max_delay_ps=self.track_range_ps,
                    resolution_ps=min(self.resolution_ps, self.track_range_ps),
                    min_significance=self.min_significance,
                )
            except NoSignificantPeakError:
                est = None
            self._next_window = w1
            self._a = self._a[ia:]
            next_lo = int(lock.offset_at(w1) + w1 - 2 * self.track_range_ps)
            self._b = self._b[np.searchsorted(self._b, next_lo) :]
            if est is None:
                self._misses += 1
                if self._misses >= self.max_misses:
                    self.losses += 1
                    self._lock = None
                    self._times, self._offsets, self._sigmas = [], [], []
                    # start acquiring afresh from what is buffered after this window
                    return ClockState("lost", misses=self._misses)
                continue
            self._misses = 0
            # the offset of B's tags against A's tags in this window, with its uncertainty
            k = 1.0 + lock.ppm * 1e-6
            self._add(mid, lock.offset_at(mid) + k * est.delay_fit_ps, k * est.delay_uncertainty_ps)
            self._refit(float(w1), est.significance)
            lock = self._lock
            assert lock is not None
        return self._state(state)

    @property
    def lock(self) -> ClockLock | None:
        """The current lock (None while acquiring)."""
        return self._lock
