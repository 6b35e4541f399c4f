"""Delay and clock finding: where the coincidence peak between two time-tag streams is.

Two stages, as qcrypto's ``pfind`` does:

1. **Coarse.** The cross-correlation of the two streams over lags
   ``[-max_delay_ps, +max_delay_ps]`` at a coarse bin. When the number of pair
   differences in that range is small it is histogrammed directly (exact, no
   aliasing); otherwise both streams are binned *folded* (wrapped modulo a
   power-of-two period that covers the lag range) into a few time segments and
   correlated with ``numpy.fft.rfft``. Folding mixes accidental pairs from the
   whole segment into each lag bin (more background, same peak); the segments
   keep that penalty bounded.
2. **Fine.** Direct pair differences ``t_b - t_a`` in a window of +-12 peak
   widths around the coarse peak, in bins of an eighth of the width (1 ps at
   least, each keeping the mean of its differences), fitted by maximum
   likelihood with a Gaussian on a flat background (EM, Dempster, Laird &
   Rubin 1977), re-windowed until window and bin stop changing. The result
   reaches the statistical limit (the Cramer-Rao bound, ``sigma_pair / sqrt(N)``
   without background) whatever ``resolution_ps`` is: ``resolution_ps`` sets
   the coarse search grid only. ``delay_uncertainty_ps`` is the bound
   computed from the fitted model (expected Fisher information of the binned
   Poisson counts).

Sign convention: ``delay_ps`` is ``t_b - t_a`` at the peak, i.e. a photon
detected on channel b arrives ``delay_ps`` later than its partner on a.
Subtract it from b's timestamps (or add it to a's) to align the streams.

Significance: the coarse correlation is scanned with windows of 1, 2, 4, ...
bins (a matched filter: a peak wider than a bin is judged by its sum over a
window about its width). At each width, the background's mean and standard
deviation come from the windows outside ``PEAK_EXCLUSION_BINS`` + 3 widths
of the candidate (so the peak's tails never inflate them), the deviation
floored at the Poisson value. The ``significance`` is the best window's
height above that background in standard deviations. When the background is
a few counts per window, a Gaussian sigma overstates rare peaks, so the peak
must also pass a Poisson look-elsewhere test: its chance probability times
the number of window positions searched at all widths must stay below
``false_alarm``. A peak passing both (``min_significance`` sigma, 6 by
default, and ``false_alarm``, 1e-3) is always accepted; failing raises
``NoSignificantPeakError``. The searched range (``max_delay_ps``, and at least
``MIN_HALF_BINS`` coarse bins each side) should span several peak widths.

Clock drift: ``track_drift`` / ``DriftTracker`` find the offset in successive
windows of two independently clocked taggers' streams and fit
``offset_ps(t) = offset0_ps + drift_ppm * 1e-6 * t`` (``t`` on tagger A's clock),
and map tagger B's timestamps onto A's clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numba
import numpy as np

from ._errors import CoincidenceError, NoSignificantPeakError
from ._tags import TagBatch, _first_decrease

#: Above this many expected pair differences in the searched range the coarse
#: stage uses the folded FFT correlation instead of the direct histogram.
DIRECT_PAIRS_MAX = 20_000_000
#: Largest FFT length (bins per segment) of the coarse stage.
FFT_BINS_MAX = 1 << 20
#: Total FFT samples per stream over all segments (bounds the coarse stage's time).
FFT_SAMPLES_BUDGET = 1 << 21
#: Coarse bins either side of the peak left out of the background statistics, on top
#: of three window widths (the peak's own tails stay out of the background).
PEAK_EXCLUSION_BINS = 8
#: Fewest background window positions the significance of a window width is judged on.
MIN_BACKGROUND_WINDOWS = 16
#: Coarse bins either side of zero lag computed at least (background statistics need them).
MIN_HALF_BINS = 512
#: Fine fit: bins per peak sigma, window half-width in sigmas, fewest bins, passes.
FIT_BINS_PER_SIGMA = 8
FIT_HALF_SIGMAS = 12.0
FIT_MIN_BINS = 32
FIT_MAX_PASSES = 8
#: Fine fit: most accidental pair differences a window may hold (bounds its time).
FIT_PAIRS_MAX = 20_000_000
#: Fine fit: EM iterations at most per pass, and the narrowest peak sigma (tags are whole ps).
EM_MAX_ITER = 2000
SIGMA_MIN_PS = 0.5
_SQRT_2PI = math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class DelayEstimate:
    """Where the correlation peak between channel a and channel b is.

    Attributes:
        delay_ps: ``t_b - t_a`` at the peak (add to a / subtract from b to align).
        significance: peak height above the coarse background, in background
            standard deviations.
        peak_counts: correlation counts in the coarse peak window (``peak_window_bins`` bins).
        background_counts: mean background counts per coarse bin.
        resolution_ps: the requested search grid (the delay itself is fitted, not binned).
        coarse_bin_ps: coarse bin width of the correlation the peak was found in.
        background_std: standard deviation of the background summed over the peak window.
        n_a: number of tags of stream a used.
        n_b: number of tags of stream b used.
        method: ``"direct"`` or ``"fft"`` (how the coarse correlation was made).
        delay_uncertainty_ps: 1-sigma uncertainty of ``delay_fit_ps`` (Cramer-Rao
            bound of the fine fit; ``delay_ps`` adds at most 0.5 ps of rounding).
        delay_fit_ps: the fine fit's delay before rounding to whole picoseconds.
        peak_sigma_ps: fitted Gaussian width (standard deviation) of the peak.
        peak_pairs: fitted number of pairs in the peak.
        peak_window_bins: width, in coarse bins, of the window the peak was judged in.
    """

    delay_ps: int
    significance: float
    peak_counts: float
    background_counts: float
    resolution_ps: int
    coarse_bin_ps: int = 0
    background_std: float = 0.0
    n_a: int = 0
    n_b: int = 0
    method: str = ""
    delay_uncertainty_ps: float = math.nan
    delay_fit_ps: float = math.nan
    peak_sigma_ps: float = math.nan
    peak_pairs: float = 0.0
    peak_window_bins: int = 1


# ---------------------------------------------------------------- numba kernels


@numba.njit(cache=True, nogil=True)
def _fold_histogram(
    times: np.ndarray, t0: int, bin_ps: int, n_bins: int, seg_ps: int, out: np.ndarray
) -> None:
    """Add ``times`` into ``out[segment, bin]``: bin = ((t - t0) // bin_ps) mod n_bins.

    ``n_bins`` is a power of two and ``out.shape[1] == n_bins`` (every bin index fits);
    segment = (t - t0) // seg_ps, clipped to the last.
    """
    mask = n_bins - 1
    n_seg = out.shape[0]
    for i in range(times.shape[0]):
        dt = times[i] - t0
        if dt < 0:
            continue
        s = dt // seg_ps
        if s >= n_seg:
            s = n_seg - 1
        b = (dt // bin_ps) & mask
        out[s, b] += 1.0


@numba.njit(cache=True, nogil=True)
def _difference_histogram(
    ta: np.ndarray, tb: np.ndarray, lo: int, bin_ps: int, counts: np.ndarray, sums: np.ndarray
) -> None:
    """Histogram every ``tb[j] - ta[i]`` in ``[lo, lo + len(counts) * bin_ps)``.

    Both arrays sorted. ``sums[k]`` accumulates ``(d - lo)`` of the pairs in bin k
    (for centroids). Two-pointer sweep: cost is the number of pairs in range.
    """
    n_bins = counts.shape[0]
    hi = lo + n_bins * bin_ps
    nb = tb.shape[0]
    j0 = 0
    for i in range(ta.shape[0]):
        start = ta[i] + lo
        while j0 < nb and tb[j0] < start:
            j0 += 1
        end = ta[i] + hi
        j = j0
        while j < nb and tb[j] < end:
            d = tb[j] - ta[i] - lo
            k = d // bin_ps
            if 0 <= k < n_bins:
                counts[k] += 1
                sums[k] += d
            j += 1


@numba.njit(cache=True, nogil=True)
def _window_scan(
    cs: np.ndarray, w: int, step: int, n_win: int, i0: int, i1: int
) -> tuple[int, float]:
    """Index and sum of the highest window among windows ``i0..i1``.

    Window i covers bins ``[i * step, i * step + w)``; ``cs`` is the cumulative
    sum of the counts with a leading zero.
    """
    best_j = i0
    best = -1.0
    for i in range(i0, i1 + 1):
        v = cs[i * step + w] - cs[i * step]
        if v > best:
            best = v
            best_j = i
    return best_j, best


@numba.njit(cache=True, nogil=True)
def _window_moments(cs: np.ndarray, w: int, step: int, lo: int, hi: int) -> tuple[float, float]:
    """Sum and sum of squares of the window sums of windows ``lo..hi-1`` (see ``_window_scan``)."""
    s1 = 0.0
    s2 = 0.0
    for i in range(lo, hi):
        v = cs[i * step + w] - cs[i * step]
        s1 += v
        s2 += v * v
    return s1, s2


# ---------------------------------------------------------------- helpers


def _as_times(x: np.ndarray, name: str) -> np.ndarray:
    """Validate a 1-D sorted integer picosecond array and return it as int64."""
    a = np.ascontiguousarray(x)
    if a.ndim != 1:
        raise CoincidenceError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise CoincidenceError(f"{name} must be integer picoseconds, got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    bad = int(_first_decrease(a))
    if bad >= 0:
        raise CoincidenceError(
            f"{name} decreases at index {bad} ({int(a[bad - 1])} ps then {int(a[bad])} ps): "
            "timestamps must be sorted"
        )
    return a


def _next_pow2(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    return 1 << max(0, int(n - 1).bit_length())


def poisson_sf(k: int, lam: float) -> float:
    """P(X >= k) for X ~ Poisson(lam), summed in log space (k >= 0, lam >= 0)."""
    if k <= 0:
        return 1.0
    if lam <= 0.0:
        return 0.0
    if k <= lam:
        # lower tail is the short sum here
        total = 0.0
        for j in range(k):
            total += math.exp(j * math.log(lam) - lam - math.lgamma(j + 1))
        return max(0.0, 1.0 - total)
    total = 0.0
    j = k
    log_lam = math.log(lam)
    while True:
        term = math.exp(j * log_lam - lam - math.lgamma(j + 1))
        total += term
        if term < 1e-18 * total or term == 0.0 or j > k + 10_000_000:
            break
        j += 1
    return min(1.0, total)


@dataclass
class _Coarse:
    """The coarse correlation over lags -K..K (index k <-> lag (k - K) * bin_ps)."""

    counts: np.ndarray
    bin_ps: int
    method: str
    detail: str


def _coarse_direct(ta: np.ndarray, tb: np.ndarray, k_max: int, bin_ps: int) -> _Coarse:
    """Direct histogram of all pair differences, bins centred on multiples of bin_ps.

    Two finite streams give fewer accidental pairs at large lags (a lag L pairs
    only the overlap of ``[a0, a1]`` and ``[b0 - L, b1 - L]``): the counts are
    divided by that overlap (relative to its mean over the lags) so that the
    background is flat and a wide scan window does not take the slope for a peak.
    """
    n = 2 * k_max + 1
    counts = np.zeros(n, np.int64)
    sums = np.zeros(n, np.float64)
    _difference_histogram(ta, tb, -k_max * bin_ps - bin_ps // 2, bin_ps, counts, sums)
    a0, a1 = float(ta[0]), float(ta[-1]) + 1.0
    b0, b1 = float(tb[0]), float(tb[-1]) + 1.0
    half = float(k_max * bin_ps)
    ends = [min(a1, b1 - x) - max(a0, b0 - x) for x in (-half, half)]
    c = counts.astype(np.float64)
    # the overlap is largest in between; skip the correction below 0.1 %
    if min(ends) > 0 and min(ends) < 0.999 * min(a1 - a0, b1 - b0):
        lags = (np.arange(n, dtype=np.float64) - k_max) * bin_ps
        overlap = np.minimum(a1, b1 - lags) - np.maximum(a0, b0 - lags)
        if np.all(overlap > 0):
            c *= overlap.mean() / overlap
    return _Coarse(c, bin_ps, "direct", f"direct histogram, {n} bins")


def _coarse_fft(
    ta: np.ndarray,
    tb: np.ndarray,
    k_max: int,
    bin_ps: int,
    n_fft: int,
    span_ps: int,
    max_delay_ps: int,
) -> _Coarse:
    """Folded, segmented FFT cross-correlation: C[k] = sum_s sum_i a_s[i] b_s[i + k].

    Each segment is a whole number of folding periods (``n_fft * bin_ps``), so
    every folded bin holds the same stretch of time and the accidental
    background is flat over the lags (a partial period would fold unevenly and
    bend it); tags after the last whole period are left out. Data shorter than
    one period are correlated unfolded.
    """
    budget = max(1, FFT_SAMPLES_BUDGET // n_fft)
    period = n_fft * bin_ps
    n_per = span_ps // period
    t0 = int(min(ta[0], tb[0]))
    if n_per >= 1:
        n_seg = int(max(1, min(budget, n_per // 4)))
        seg_ps = (n_per // n_seg) * period
        end = t0 + n_seg * seg_ps
        ta = ta[: np.searchsorted(ta, end)]
        tb = tb[: np.searchsorted(tb, end)]
    else:
        n_seg, seg_ps = 1, span_ps
    ha = np.zeros((n_seg, n_fft), np.float64)
    hb = np.zeros((n_seg, n_fft), np.float64)
    _fold_histogram(ta, t0, bin_ps, n_fft, seg_ps, ha)
    _fold_histogram(tb, t0, bin_ps, n_fft, seg_ps, hb)
    acc = (np.conj(np.fft.rfft(ha, axis=1)) * np.fft.rfft(hb, axis=1)).sum(axis=0)
    corr = np.fft.irfft(acc, n=n_fft)
    lin = np.concatenate((corr[n_fft - k_max :], corr[: k_max + 1]))
    lin = np.maximum(np.rint(lin), 0.0)
    return _Coarse(lin, bin_ps, "fft", f"folded FFT, {n_fft} bins x {n_seg} segments")


@dataclass(frozen=True)
class _Peak:
    """The best peak of the coarse correlation at one window width (``width`` bins)."""

    centre: float  # coarse-bin index of the window's centre
    width: int
    counts: float
    mean: float  # expected background counts in a window of ``width`` bins
    std: float  # background standard deviation of a window's sum
    sig: float
    p_one: float  # Poisson chance of a background window this high (one position)
    positions: int  # window positions searched at this width


def _scan_peak(c: np.ndarray, k_all: int, k_max: int) -> tuple[list[_Peak], int]:
    """Best peak of ``c`` at each window width 1, 2, 4, ... bins; and the total positions.

    A matched-filter scan: a peak much wider than one bin is judged by the sum
    over a window about its width, not by its highest bin. At each width the
    background statistics come from the windows outside ``PEAK_EXCLUSION_BINS +
    3 * width`` bins of the candidate (a boxcar about 2.5 sigma wide leaves out
    +-7.5 sigma of the peak, so its tails do not inflate the background
    variance); the variance is floored at the Poisson value of the mean.
    """
    n = c.size
    cs = np.empty(n + 1, np.float64)
    cs[0] = 0.0
    np.cumsum(c, out=cs[1:])
    total = float(cs[-1])
    out: list[_Peak] = []
    n_pos = 0
    w = 1
    while w <= 2 * k_max + 1:
        excl = PEAK_EXCLUSION_BINS + 3 * w
        step = max(1, w // 2)
        free = n - 2 * excl - w
        if w > 1 and (free < n // 4 or free // step < MIN_BACKGROUND_WINDOWS):
            break
        # window i starts at bin i * step; its centre i * step + (w - 1) / 2 must lie
        # within +-k_max of zero lag
        n_win = (n - w) // step + 1
        i0 = max(0, math.ceil((k_all - k_max - 0.5 * (w - 1)) / step))
        i1 = min(n_win - 1, math.floor((k_all + k_max - 0.5 * (w - 1)) / step))
        m = i1 - i0 + 1
        if m <= 0:
            break
        n_pos += m
        j, peak = _window_scan(cs, w, step, n_win, i0, i1)
        cpk = j * step + 0.5 * (w - 1)
        r0 = max(0, math.floor(cpk - excl))
        r1 = min(n, math.ceil(cpk + excl) + 1)
        n_bg = n - (r1 - r0)
        # background windows: wholly left of r0 (start <= r0 - w) or right of r1 (start >= r1)
        left = max(0, (r0 - w) // step + 1) if r0 >= w else 0
        right = min(n_win, -(-r1 // step))
        if n_bg < 8 or left + (n_win - right) < 2:
            if w == 1:  # too few bins for statistics: use them all
                n_bg, r0, r1, left, right = n, 0, 0, n_win, n_win
            else:
                break
        mean_bin = (total - float(cs[r1] - cs[r0])) / n_bg
        sl1, sl2 = _window_moments(cs, w, step, 0, left)
        sr1, sr2 = _window_moments(cs, w, step, right, n_win)
        n_b = left + (n_win - right)
        s1, s2 = sl1 + sr1, sl2 + sr2
        mean = w * mean_bin
        var = max(0.0, s2 / n_b - (s1 / n_b) ** 2)
        # an empty background still means "below one count in all these bins", not zero
        floor = w * max(mean_bin, 1.0 / n_bg)
        std = math.sqrt(max(var, floor))
        sig = (peak - mean) / std
        # Poisson chance of a window this high, with the background's over-dispersion
        phi = max(1.0, var / mean) if mean > 0 else 1.0
        lam = floor / phi
        k_obs = math.floor(peak / phi)
        # at or below the mean the chance is ~1 anyway: skip the long lower-tail sum
        p_one = 1.0 if k_obs <= lam else (poisson_sf(k_obs, lam) if lam < 1e4 else 0.0)
        out.append(_Peak(cpk, w, peak, mean, std, sig, p_one, m))
        w *= 2
    return out, n_pos


def _judge(
    peaks: list[_Peak], n_pos: int, min_significance: float, false_alarm: float
) -> tuple[_Peak, float, bool]:
    """The most significant peak that passes both tests, else the most significant one.

    Returns (peak, its look-elsewhere chance probability over ``n_pos`` positions,
    passed). ``peaks`` must not be empty.
    """
    best, p_best, ok = peaks[0], 1.0, False
    for pk in peaks:
        p_any = min(1.0, pk.p_one * n_pos)
        passes = pk.sig >= min_significance and p_any <= false_alarm
        if (passes, pk.sig) > (ok, best.sig):
            best, p_best, ok = pk, p_any, passes
    return best, p_best, ok


@dataclass(frozen=True)
class _Fit:
    """Maximum-likelihood Gaussian-on-flat-background fit of the pair-difference peak."""

    mu: float
    sigma: float
    mu_err: float
    signal: float
    background_per_ps: float


def _em_gauss_flat(
    x: np.ndarray, n: np.ndarray, length: float, mu: float, sigma: float
) -> tuple[float, float, float]:
    """EM for a Gaussian plus a flat density on a window of ``length`` ps; binned data.

    ``x`` are the mean differences in each bin, ``n`` the counts. Returns
    (mu, sigma, signal fraction). Dempster, Laird & Rubin, J. R. Stat. Soc. B 39,
    1 (1977); the mixture updates as in McLachlan & Peel, *Finite Mixture
    Models* (2000), ch. 2.
    """
    total = float(n.sum())
    frac = 0.5
    for _ in range(EM_MAX_ITER):
        z = (x - mu) / sigma
        g = frac * np.exp(-0.5 * z * z) / (_SQRT_2PI * sigma)
        r = g / (g + (1.0 - frac) / length)
        nr = n * r
        s = float(nr.sum())
        if s <= 0.0:
            return mu, sigma, 0.0
        mu_new = float((nr * x).sum() / s)
        sigma_new = max(SIGMA_MIN_PS, math.sqrt(float((nr * (x - mu_new) ** 2).sum() / s)))
        frac_new = s / total
        done = (
            abs(mu_new - mu) < 1e-7 * sigma
            and abs(sigma_new - sigma) < 1e-6 * sigma
            and abs(frac_new - frac) < 1e-7
        )
        mu, sigma, frac = mu_new, sigma_new, frac_new
        if done:
            break
    return mu, sigma, frac


def _fisher_mu_error(
    centres: np.ndarray, h: float, mu: float, sigma: float, signal: float, bg_per_ps: float
) -> float:
    """1-sigma error of mu from the expected Fisher information of the binned model.

    Parameters (mu, sigma, signal, background density), Poisson counts per bin
    ``lam_k = h * (signal * phi(x_k) + b)``; ``I = sum_k grad(lam_k) grad(lam_k)^T / lam_k``
    and the error is ``sqrt((I^-1)[0, 0])`` (Cramer-Rao; e.g. Barlow, *Statistics*,
    Wiley 1989, ch. 5).
    """
    z = (centres - mu) / sigma
    phi = np.exp(-0.5 * z * z) / (_SQRT_2PI * sigma)
    lam = h * (signal * phi + bg_per_ps)
    ok = lam > 0
    grads = np.stack(
        [
            h * signal * phi * z / sigma,
            h * signal * phi * (z * z - 1.0) / sigma,
            h * phi,
            np.full_like(phi, h),
        ]
    )[:, ok]
    info = (grads / lam[ok]) @ grads.T
    if bg_per_ps <= 0.0:  # background fixed at zero: drop its row
        info = info[:3, :3]
    try:
        cov = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        return sigma / math.sqrt(max(signal, 1.0))
    v = float(cov[0, 0])
    return math.sqrt(v) if v > 0 and math.isfinite(v) else sigma / math.sqrt(max(signal, 1.0))


def _fit_peak(ta: np.ndarray, tb: np.ndarray, lag_ps: float, sigma_ps: float) -> _Fit | None:
    """Fit the peak of ``t_b - t_a`` near ``lag_ps`` (width guess ``sigma_ps``) at full precision.

    Passes of: histogram every pair difference within ``+-FIT_HALF_SIGMAS`` sigma
    of the current centre in bins of ``sigma / FIT_BINS_PER_SIGMA`` (1 ps at
    least: tags are whole ps; each bin keeps the mean of its differences, so
    nothing is lost to binning), then the maximum-likelihood Gaussian on a flat
    background by EM; until the window and the bin stop changing. The result is
    efficient (reaches the Cramer-Rao bound ``sigma_pair / sqrt(N)`` without
    background) whatever the coarse bin was. None if no peak is left in the window.
    """
    mu, sigma = float(lag_ps), max(float(sigma_ps), SIGMA_MIN_PS)
    fit: _Fit | None = None
    span = max(1, int(max(ta[-1], tb[-1])) - int(min(ta[0], tb[0])))
    # widest window whose accidental pair differences stay within the budget
    half_max = max(1.0, 0.5 * FIT_PAIRS_MAX * span / max(1.0, float(ta.size) * float(tb.size)))
    for _ in range(FIT_MAX_PASSES):
        sigma = min(sigma, half_max / FIT_HALF_SIGMAS)
        h = max(1, int(sigma / FIT_BINS_PER_SIGMA))
        half = max(FIT_HALF_SIGMAS * sigma, FIT_MIN_BINS * h)
        n_bins = int(-(-2 * half // h))
        lo = math.floor(mu - 0.5 * n_bins * h)
        counts = np.zeros(n_bins, np.int64)
        sums = np.zeros(n_bins, np.float64)
        _difference_histogram(ta, tb, lo, h, counts, sums)
        total = int(counts.sum())
        if total == 0:
            return fit
        n = counts.astype(np.float64)
        centres = lo + np.arange(n_bins) * h + 0.5 * (h - 1)
        x = np.where(counts > 0, lo + sums / np.maximum(n, 1.0), centres)
        length = float(n_bins * h)
        mu_new, sigma_new, frac = _em_gauss_flat(x, n, length, mu, sigma)
        signal = frac * total
        if not (signal >= 1.0 and math.isfinite(mu_new) and lo <= mu_new < lo + length):
            return fit
        bg = (1.0 - frac) * total / length
        err = _fisher_mu_error(centres, float(h), mu_new, sigma_new, signal, bg)
        fit = _Fit(mu_new, sigma_new, err, signal, bg)
        stable = (
            abs(mu_new - mu) < 0.5 * sigma_new
            and abs(sigma_new - sigma) < 0.1 * sigma_new
            and max(1, int(sigma_new / FIT_BINS_PER_SIGMA)) == h
        )
        mu, sigma = mu_new, sigma_new
        if stable:
            break
    return fit


def find_delay(
    times_a_ps: np.ndarray,
    times_b_ps: np.ndarray,
    *,
    max_delay_ps: int,
    resolution_ps: int = 1000,
    min_significance: float = 6.0,
    expected_delay_ps: int = 0,
    false_alarm: float = 1e-3,
    method: str = "auto",
) -> DelayEstimate:
    """Find the delay ``t_b - t_a`` of the correlation peak between two sorted tag streams.

    The result's ``delay_ps`` is ``t_b - t_a`` at the peak (b later: positive);
    ``significance`` is measured on the coarse correlation (see the module
    docstring). Searches ``expected_delay_ps +- max_delay_ps``; the result is resolved to
    ``resolution_ps`` (fine stage). ``method`` picks the coarse stage: ``"auto"``
    (direct when few pair differences fall in range, else FFT), ``"direct"`` or
    ``"fft"``. Raises ``NoSignificantPeakError`` when the best peak is below
    ``min_significance`` sigma or could be a background fluctuation (chance
    probability over all searched bins above ``false_alarm``).
    """
    ta = _as_times(times_a_ps, "times_a_ps")
    tb = _as_times(times_b_ps, "times_b_ps")
    max_delay_ps, resolution_ps = int(max_delay_ps), int(resolution_ps)
    expected = int(expected_delay_ps)
    if resolution_ps <= 0:
        raise CoincidenceError(f"resolution_ps must be positive, got {resolution_ps}")
    if max_delay_ps < resolution_ps:
        raise CoincidenceError(
            f"max_delay_ps ({max_delay_ps}) must be at least resolution_ps ({resolution_ps})"
        )
    if not min_significance > 0:
        raise CoincidenceError(f"min_significance must be positive, got {min_significance}")
    if method not in ("auto", "direct", "fft"):
        raise CoincidenceError(f"method must be 'auto', 'direct' or 'fft', got {method!r}")
    if ta.size == 0 or tb.size == 0:
        raise NoSignificantPeakError(
            f"cannot find a delay: stream a has {ta.size} tags and stream b has {tb.size} "
            "(no light on one channel? check the detectors and the channel numbers)"
        )
    if expected:
        tb = tb - expected
    lo_t = int(min(ta[0], tb[0]))
    span_ps = int(max(ta[-1], tb[-1])) - lo_t + 1
    n_pairs = ta.size * tb.size * min(1.0, 2.0 * max_delay_ps / span_ps)
    use_direct = method == "direct" or (method == "auto" and n_pairs <= DIRECT_PAIRS_MAX)

    bin_ps = resolution_ps
    if use_direct:
        while 2 * -(-max_delay_ps // bin_ps) + 1 > (1 << 22):
            bin_ps *= 2
        k_max = -(-max_delay_ps // bin_ps)
        k_all = max(k_max, MIN_HALF_BINS)
        coarse = _coarse_direct(ta, tb, k_all, bin_ps)
    else:
        while _next_pow2(2 * -(-max_delay_ps // bin_ps) + 2) > FFT_BINS_MAX:
            bin_ps *= 2
        k_max = -(-max_delay_ps // bin_ps)
        k_all = max(k_max, MIN_HALF_BINS)
        n_fft = _next_pow2(2 * k_all + 2)
        coarse = _coarse_fft(ta, tb, k_all, bin_ps, n_fft, span_ps, k_all * bin_ps)

    # the peak is searched within +-k_max; the background uses all k_all bins
    peaks, n_pos = _scan_peak(coarse.counts, k_all, k_max)
    best, p_best, ok = _judge(peaks, n_pos, min_significance, false_alarm)
    lag_ps = (best.centre - k_all) * bin_ps
    if not ok:
        span_s = span_ps * 1e-12
        sig = best.sig
        why = (
            f"the best peak, at {round(lag_ps) + expected} ps, stands {sig:.1f} sigma above the "
            f"background in a window of {best.width} bin(s) (threshold {min_significance:g} sigma)"
        )
        if sig >= min_significance:
            why += (
                f" but a background window this high is expected by chance with probability "
                f"{p_best:.2g} over {n_pos} positions at {len(peaks)} window widths "
                f"(false_alarm threshold {false_alarm:g})"
            )
        raise NoSignificantPeakError(
            f"no significant correlation peak: searched delays {expected - max_delay_ps} to "
            f"{expected + max_delay_ps} ps in {bin_ps} ps coarse bins ({coarse.detail}), "
            f"{ta.size} tags on a and {tb.size} on b over {span_s:.3g} s; {why}. Try a longer "
            "acquisition, a wider max_delay_ps, a coarser resolution_ps, or check the light "
            "and the detectors"
        )

    # fine stage: maximum-likelihood fit of the direct differences around the coarse peak
    fit = _fit_peak(ta, tb, lag_ps, best.width * bin_ps / 2.5)
    if fit is None:  # nothing left to fit (should not happen after a significant peak)
        mu, err, width, signal = lag_ps, bin_ps / math.sqrt(12.0), math.nan, best.counts
    else:
        mu, err, width, signal = fit.mu, fit.mu_err, fit.sigma, fit.signal
    return DelayEstimate(
        delay_ps=round(mu) + expected,
        significance=float(best.sig),
        peak_counts=best.counts,
        background_counts=best.mean / best.width,
        resolution_ps=resolution_ps,
        coarse_bin_ps=bin_ps,
        background_std=best.std,
        n_a=int(ta.size),
        n_b=int(tb.size),
        method=coarse.method,
        delay_uncertainty_ps=float(err),
        delay_fit_ps=float(mu + expected),
        peak_sigma_ps=float(width),
        peak_pairs=float(signal),
        peak_window_bins=best.width,
    )


def find_delay_in_batch(
    batch: TagBatch, channel_a: int, channel_b: int, **kwargs: object
) -> DelayEstimate:
    """``find_delay`` between two channels of one batch (keyword arguments passed on)."""
    for name, ch in (("channel_a", channel_a), ("channel_b", channel_b)):
        if not 0 <= int(ch) < 256:
            raise CoincidenceError(f"{name} must be in 0..255, got {ch}")
    if channel_a == channel_b:
        raise CoincidenceError(f"channel_a and channel_b are both {channel_a}: pick two channels")
    ta = batch.timestamps[batch.channels == channel_a]
    tb = batch.timestamps[batch.channels == channel_b]
    if ta.size == 0 or tb.size == 0:
        raise NoSignificantPeakError(
            f"cannot find a delay: channel {channel_a} has {ta.size} tags and channel "
            f"{channel_b} has {tb.size} in the batch [{batch.begin_ps}, {batch.end_ps}) ps "
            "(wrong channel numbers, or no light?)"
        )
    return find_delay(ta, tb, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- clock drift


@dataclass(frozen=True, eq=False)
class ClockDrift:
    """Linear clock relation of tagger B to tagger A: ``t_b - t_a = offset0 + drift * t_a``.

    Attributes:
        offset0_ps: offset ``t_b - t_a`` at ``t_a = 0`` on A's clock, picoseconds.
        drift_ppm: rate difference of B's clock relative to A's, parts per million.
        window_times_ps: A-clock midpoints of the windows the fit used.
        window_offsets_ps: the offset found in each of those windows.
        residual_rms_ps: rms of the windows' offsets about the fitted line.
        offset0_uncertainty_ps: 1-sigma uncertainty of ``offset0_ps`` (nan if unknown).
        drift_uncertainty_ppm: 1-sigma uncertainty of ``drift_ppm`` (nan if unknown).
        window_uncertainties_ps: 1-sigma uncertainty of each window's offset (nan
            where unknown); empty when no window had one.

    The uncertainties come from the covariance of the weighted least-squares
    fit (weights ``1 / sigma_i^2`` from the windows' delay uncertainties),
    scaled up by the Birge ratio ``sqrt(chi2 / dof)`` when the windows scatter
    more than their uncertainties say (phase noise, a non-linear drift); see
    e.g. Bevington & Robinson, *Data Reduction and Error Analysis*, ch. 6.
    Without per-window uncertainties they come from the residual scatter.
    """

    offset0_ps: float
    drift_ppm: float
    window_times_ps: np.ndarray = field(repr=False)
    window_offsets_ps: np.ndarray = field(repr=False)
    residual_rms_ps: float
    offset0_uncertainty_ps: float = math.nan
    drift_uncertainty_ppm: float = math.nan
    window_uncertainties_ps: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def offset_at(self, t_a_ps: float | np.ndarray) -> float | np.ndarray:
        """Offset ``t_b - t_a`` (ps) at A-clock time(s) ``t_a_ps``."""
        return self.offset0_ps + self.drift_ppm * 1e-6 * np.asarray(t_a_ps, np.float64)

    def to_clock_a(self, times_b_ps: np.ndarray) -> np.ndarray:
        """Map tagger B's timestamps onto A's clock: ``t_a = (t_b - offset0) / (1 + drift)``.

        Computed as ``t_b - rint((offset0 + k t_b) / (1 + k))`` so that large
        timestamps keep picosecond precision; order is preserved.
        """
        tb = np.asarray(times_b_ps, np.int64)
        k = self.drift_ppm * 1e-6
        corr = (self.offset0_ps + k * tb.astype(np.float64)) / (1.0 + k)
        return tb - np.rint(corr).astype(np.int64)

    def compose(self, second: ClockDrift) -> ClockDrift:
        """The raw-B-to-A relation when ``second`` was fitted on B already mapped by ``self``.

        With ``B' = self.to_clock_a(B)`` and ``B' - A = o2 + k2 A``:
        ``B - A = o1 + (1 + k1) o2 + ((1 + k1)(1 + k2) - 1) A``; ``second``'s window
        offsets are carried onto B's raw clock the same way. ``self`` is a known map
        applied to the data, so the uncertainties are ``second``'s, times ``1 + k1``.
        """
        k1, k2 = self.drift_ppm * 1e-6, second.drift_ppm * 1e-6
        t = second.window_times_ps
        return ClockDrift(
            offset0_ps=self.offset0_ps + (1.0 + k1) * second.offset0_ps,
            drift_ppm=((1.0 + k1) * (1.0 + k2) - 1.0) * 1e6,
            window_times_ps=t,
            window_offsets_ps=self.offset0_ps + k1 * t + (1.0 + k1) * second.window_offsets_ps,
            residual_rms_ps=second.residual_rms_ps,
            offset0_uncertainty_ps=(1.0 + k1) * second.offset0_uncertainty_ps,
            drift_uncertainty_ppm=(1.0 + k1) * second.drift_uncertainty_ppm,
            window_uncertainties_ps=(1.0 + k1) * second.window_uncertainties_ps,
        )

    @classmethod
    def identity(cls) -> ClockDrift:
        """The relation of a clock to itself (no offset, no drift, no windows)."""
        return cls(0.0, 0.0, np.zeros(0), np.zeros(0), 0.0, 0.0, 0.0)


def _fit_line(
    times_ps: np.ndarray, offsets_ps: np.ndarray, sigmas_ps: np.ndarray | None = None
) -> ClockDrift:
    """Least-squares line ``offset = offset0 + drift * t`` through (time, offset) points.

    Weighted by ``1 / sigmas_ps^2`` when every point has a finite positive
    uncertainty; the parameter covariance is ``(X^T W X)^-1`` times
    ``max(1, chi2 / dof)`` (see ``ClockDrift``). Otherwise unweighted, with the
    covariance from the residual variance ``RSS / (n - 2)`` (nan for two points).
    """
    t = np.asarray(times_ps, np.float64)
    y = np.asarray(offsets_ps, np.float64)
    sig = None if sigmas_ps is None else np.asarray(sigmas_ps, np.float64)
    weighted = sig is not None and sig.size == t.size and bool(np.all(np.isfinite(sig) & (sig > 0)))
    w = 1.0 / sig**2 if weighted and sig is not None else np.ones_like(t)
    sw = float(w.sum())
    tc = float((w * t).sum() / sw)
    dt = t - tc
    den = float((w * dt * dt).sum())
    at_tc = float((w * y).sum() / sw)
    slope = float((w * dt * (y - at_tc)).sum() / den) if den > 0 else 0.0
    resid = y - (at_tc + slope * dt)
    dof = t.size - 2
    if weighted:
        chi2 = float((w * resid * resid).sum())
        scale = max(1.0, chi2 / dof) if dof > 0 else 1.0
    else:
        scale = float((resid * resid).sum() / dof) if dof > 0 else math.nan
    # centred at the weighted mean time, intercept and slope are uncorrelated
    var_at_tc = scale / sw
    var_slope = scale / den if den > 0 else math.nan
    return ClockDrift(
        offset0_ps=float(at_tc - slope * tc),
        drift_ppm=slope * 1e6,
        window_times_ps=t,
        window_offsets_ps=y,
        residual_rms_ps=float(np.sqrt(np.mean(resid * resid))),
        offset0_uncertainty_ps=math.sqrt(var_at_tc + tc * tc * var_slope),
        drift_uncertainty_ppm=math.sqrt(var_slope) * 1e6,
        window_uncertainties_ps=sig if sig is not None else np.full(t.size, math.nan),
    )


class DriftTracker:
    """Find the offset in successive windows of two taggers' streams and fit a linear drift.

    Feed windows with ``add_window`` (windows without a significant peak are
    skipped and counted); ``fit()`` returns a ``ClockDrift`` once two windows
    have offsets. After the first fit, each window is searched around the
    predicted offset.
    """

    def __init__(
        self,
        *,
        max_delay_ps: int,
        resolution_ps: int = 1000,
        min_significance: float = 6.0,
        expected_offset_ps: int = 0,
        max_windows: int | None = None,
    ) -> None:
        if max_windows is not None and int(max_windows) < 2:
            raise CoincidenceError(f"max_windows must be >= 2 or None, got {max_windows}")
        if int(max_delay_ps) <= 0 or int(resolution_ps) <= 0:
            raise CoincidenceError(
                f"max_delay_ps and resolution_ps must be positive, got {max_delay_ps} "
                f"and {resolution_ps}"
            )
        self.max_delay_ps = int(max_delay_ps)
        self.resolution_ps = int(resolution_ps)
        self.min_significance = float(min_significance)
        self.expected_offset_ps = int(expected_offset_ps)
        self.max_windows = None if max_windows is None else int(max_windows)
        self._times: list[float] = []
        self._offsets: list[float] = []
        self._sigmas: list[float] = []
        self.skipped_windows = 0
        self.added_offsets = 0

    @classmethod
    def from_fit(
        cls, fit: ClockDrift, *, max_delay_ps: int, max_windows: int | None = None
    ) -> DriftTracker:
        """A tracker seeded with ``fit``'s window offsets (e.g. from ``track_drift``)."""
        tracker = cls(max_delay_ps=max_delay_ps, max_windows=max_windows)
        sig = fit.window_uncertainties_ps
        if sig.size != fit.window_times_ps.size:
            sig = np.full(fit.window_times_ps.size, math.nan)
        for t, y, e in zip(fit.window_times_ps, fit.window_offsets_ps, sig, strict=True):
            tracker._append(float(t), float(y), float(e))
        return tracker

    def _append(self, t_a_ps: float, offset_ps: float, sigma_ps: float = math.nan) -> None:
        self._times.append(t_a_ps)
        self._offsets.append(offset_ps)
        self._sigmas.append(sigma_ps)
        if self.max_windows is not None and len(self._times) > self.max_windows:
            keep = -self.max_windows
            del self._times[:keep], self._offsets[:keep], self._sigmas[:keep]

    def add_offset(
        self, t_a_ps: float, offset_ps: float, uncertainty_ps: float | None = None
    ) -> ClockDrift | None:
        """Add an offset ``t_b - t_a`` (ps) measured elsewhere at A-clock time ``t_a_ps``.

        ``uncertainty_ps`` is its 1-sigma uncertainty when known (the fit is
        weighted only when every window has one). Returns the new fit (None
        while fewer than two windows are known).
        """
        sigma = math.nan if uncertainty_ps is None else float(uncertainty_ps)
        self._append(float(t_a_ps), float(offset_ps), sigma)
        self.added_offsets += 1
        return self.fit() if len(self._times) >= 2 else None

    def add_window(
        self, times_a_ps: np.ndarray, times_b_ps: np.ndarray, begin_ps: int, end_ps: int
    ) -> DelayEstimate | None:
        """Find the offset in the window ``[begin_ps, end_ps)`` of A's clock; None if no peak."""
        if end_ps <= begin_ps:
            raise CoincidenceError(f"window end {end_ps} ps is not after begin {begin_ps} ps")
        mid = 0.5 * (begin_ps + end_ps)
        expected = self.expected_offset_ps
        if len(self._times) >= 2:
            expected = round(float(self.fit().offset_at(mid)))
        elif self._offsets:
            expected = round(self._offsets[-1])
        try:
            est = find_delay(
                times_a_ps,
                times_b_ps,
                max_delay_ps=self.max_delay_ps,
                resolution_ps=self.resolution_ps,
                min_significance=self.min_significance,
                expected_delay_ps=expected,
            )
        except NoSignificantPeakError:
            self.skipped_windows += 1
            return None
        self._append(mid, est.delay_fit_ps, est.delay_uncertainty_ps)
        return est

    @property
    def n_windows(self) -> int:
        """Windows with a significant peak so far."""
        return len(self._times)

    def fit(self) -> ClockDrift:
        """Least-squares line through the windows' offsets (needs two windows)."""
        if len(self._times) < 2:
            raise CoincidenceError(
                f"need offsets from at least 2 windows to fit a drift, have {len(self._times)} "
                f"({self.skipped_windows} windows had no significant peak)"
            )
        return _fit_line(
            np.asarray(self._times), np.asarray(self._offsets), np.asarray(self._sigmas)
        )

    @property
    def drift_ppm(self) -> float:
        """Fitted drift of B's clock relative to A's, ppm."""
        return self.fit().drift_ppm

    @property
    def offset0_ps(self) -> float:
        """Fitted offset ``t_b - t_a`` at ``t_a = 0``, picoseconds."""
        return self.fit().offset0_ps

    def correct(self, times_b_ps: np.ndarray) -> np.ndarray:
        """Tagger B's timestamps mapped onto A's clock with the current fit."""
        return self.fit().to_clock_a(times_b_ps)


def _windows(times: np.ndarray, edges: np.ndarray) -> list[np.ndarray]:
    """Split sorted ``times`` at ``edges`` into len(edges) - 1 views."""
    idx = np.searchsorted(times, edges, side="left")
    return [times[idx[i] : idx[i + 1]] for i in range(len(edges) - 1)]


def track_drift(
    times_a_ps: np.ndarray,
    times_b_ps: np.ndarray,
    *,
    window_ps: int,
    max_delay_ps: int,
    resolution_ps: int = 1000,
    max_drift_ppm: float = 100.0,
    min_significance: float = 6.0,
) -> ClockDrift:
    """Offset and linear drift of tagger B's clock relative to A's from two whole streams.

    Pass 1 searches each window of ``window_ps`` (on A's clock) over
    ``+-max_delay_ps`` at a bin no finer than the smear a drift of
    ``max_drift_ppm`` causes within one window; the fitted line corrects B, and
    later passes on the corrected stream narrow the bin (16x each pass) down to
    ``resolution_ps``. The returned fit composes all passes.
    """
    ta = _as_times(times_a_ps, "times_a_ps")
    tb = _as_times(times_b_ps, "times_b_ps")
    window_ps, resolution_ps = int(window_ps), int(resolution_ps)
    if window_ps <= 0 or resolution_ps <= 0 or int(max_delay_ps) <= 0:
        raise CoincidenceError(
            f"window_ps, max_delay_ps and resolution_ps must be positive, got {window_ps}, "
            f"{max_delay_ps} and {resolution_ps}"
        )
    if max_drift_ppm < 0:
        raise CoincidenceError(f"max_drift_ppm must be >= 0, got {max_drift_ppm}")
    if ta.size == 0 or tb.size == 0:
        raise NoSignificantPeakError(
            f"cannot track drift: stream a has {ta.size} tags and stream b has {tb.size}"
        )
    begin = int(ta[0])
    n_win = max(1, -(-(int(ta[-1]) + 1 - begin) // window_ps))
    if n_win < 2:
        raise CoincidenceError(
            f"the streams span less than two windows of {window_ps} ps: use a shorter window_ps"
        )
    edges = begin + np.arange(n_win + 1, dtype=np.int64) * window_ps
    res = max(resolution_ps, int(max_drift_ppm * 1e-6 * window_ps))
    search = int(max_delay_ps)
    total: ClockDrift | None = None
    tb_cur = tb
    for _ in range(6):
        tracker = DriftTracker(
            max_delay_ps=max(search, res), resolution_ps=res, min_significance=min_significance
        )
        for wa, wb, e0, e1 in zip(
            _windows(ta, edges), _windows(tb_cur, edges), edges[:-1], edges[1:], strict=True
        ):
            if wa.size and wb.size:
                tracker.add_window(wa, wb, int(e0), int(e1))
        fit = tracker.fit()
        total = fit if total is None else total.compose(fit)
        if res <= resolution_ps:
            break
        tb_cur = total.to_clock_a(tb)
        search = max(4 * res, int(4 * fit.residual_rms_ps))
        res = max(resolution_ps, res // 16)
    assert total is not None
    return total
