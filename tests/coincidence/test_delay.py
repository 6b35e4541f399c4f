import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coincidence import (
    CoincidenceError,
    DriftTracker,
    NoSignificantPeakError,
    TagBatch,
    find_delay,
    find_delay_in_batch,
    track_drift,
)
from coincidence._delay import poisson_sf

S = 10**12  # one second in ps


def streams(
    seed, *, duration_ps, rate_a, rate_b, pair_rate, delay_ps, jitter_ps=50.0, ppm=0.0, offset=0
):
    """Poisson singles on a and b plus correlated pairs: b's partner at t + delay (+ jitter).

    Tagger b may run on its own clock: its times are scaled by (1 + ppm 1e-6) and shifted
    by ``offset`` (a's clock is the reference).
    """
    rng = np.random.default_rng(seed)
    sec = duration_ps * 1e-12
    na, nb, npair = (
        rng.poisson(rate_a * sec),
        rng.poisson(rate_b * sec),
        rng.poisson(pair_rate * sec),
    )
    tp = rng.integers(0, duration_ps, npair)
    a = np.concatenate([rng.integers(0, duration_ps, na), tp])
    jit = np.rint(rng.normal(0.0, jitter_ps, npair)).astype(np.int64) if jitter_ps else 0
    b = np.concatenate([rng.integers(0, duration_ps, nb), tp + delay_ps + jit])
    if ppm:
        b = np.rint(b * (1.0 + ppm * 1e-6)).astype(np.int64)
    b = b + offset
    return np.sort(a), np.sort(b)


@pytest.mark.parametrize("method", ["fft", "direct"])
@pytest.mark.parametrize("delay", [37_123_456, -37_123_456, 2_345, -800, 0, 99_000_000])
def test_delay_found_within_one_fine_bin(delay, method):
    a, b = streams(1, duration_ps=S // 5, rate_a=2e5, rate_b=3e5, pair_rate=2e4, delay_ps=delay)
    est = find_delay(a, b, max_delay_ps=100_000_000, resolution_ps=1000, method=method)
    assert abs(est.delay_ps - delay) <= 1000
    assert est.significance >= 6.0
    assert est.method == method
    assert est.n_a == a.size and est.n_b == b.size
    assert est.peak_counts > est.background_counts


def test_sign_convention_is_b_minus_a():
    a = np.arange(1000, dtype=np.int64) * 1_000_003
    b = a + 7_000
    est = find_delay(a, b, max_delay_ps=50_000, resolution_ps=100)
    assert abs(est.delay_ps - 7_000) <= 100
    est = find_delay(b, a, max_delay_ps=50_000, resolution_ps=100)
    assert abs(est.delay_ps + 7_000) <= 100


def test_fine_resolution_resolves_small_delays():
    a, b = streams(
        2, duration_ps=S // 10, rate_a=1e5, rate_b=1e5, pair_rate=2e4, delay_ps=1_234, jitter_ps=20
    )
    est = find_delay(a, b, max_delay_ps=1_000_000, resolution_ps=50)
    assert abs(est.delay_ps - 1_234) <= 50
    assert est.resolution_ps == 50


def test_expected_delay_shifts_the_search_window():
    a, b = streams(
        3, duration_ps=S // 10, rate_a=1e5, rate_b=1e5, pair_rate=1e4, delay_ps=5_000_000
    )
    with pytest.raises(NoSignificantPeakError):
        find_delay(a, b, max_delay_ps=1_000_000)
    est = find_delay(a, b, max_delay_ps=1_000_000, expected_delay_ps=4_500_000)
    assert abs(est.delay_ps - 5_000_000) <= 1000


@pytest.mark.parametrize("method", ["fft", "direct"])
def test_uncorrelated_data_is_refused_with_threshold_in_message(method):
    a, b = streams(4, duration_ps=S // 5, rate_a=3e5, rate_b=3e5, pair_rate=0, delay_ps=0)
    with pytest.raises(NoSignificantPeakError) as info:
        find_delay(a, b, max_delay_ps=100_000_000, resolution_ps=1000, method=method)
    msg = str(info.value)
    assert "threshold 6 sigma" in msg
    assert "-100000000 to 100000000 ps" in msg
    assert "longer acquisition" in msg and "check the light" in msg


def test_sparse_background_fluctuation_is_not_a_peak():
    # a few hundred tags: single noise coincidences stand many Gaussian "sigma" high
    # above a mean of ~0.01 per bin; the Poisson look-elsewhere test refuses them
    a, b = streams(5, duration_ps=S // 10, rate_a=5e3, rate_b=5e3, pair_rate=0, delay_ps=0)
    msg = r"expected by chance with probability 1 over \d+ positions at \d+ window widths"
    with pytest.raises(NoSignificantPeakError, match=msg):
        find_delay(a, b, max_delay_ps=100_000_000, resolution_ps=1000)


def test_weak_but_real_peak_in_sparse_data_is_found():
    a, b = streams(
        6, duration_ps=S // 10, rate_a=5e3, rate_b=5e3, pair_rate=300, delay_ps=-12_345_000
    )
    est = find_delay(a, b, max_delay_ps=100_000_000, resolution_ps=1000)
    assert abs(est.delay_ps + 12_345_000) <= 1000


def test_higher_threshold_refuses_a_modest_peak():
    a, b = streams(7, duration_ps=S // 5, rate_a=3e5, rate_b=3e5, pair_rate=1e3, delay_ps=10_000)
    est = find_delay(a, b, max_delay_ps=1_000_000, resolution_ps=1000)
    with pytest.raises(NoSignificantPeakError, match="threshold 1000 sigma"):
        find_delay(a, b, max_delay_ps=1_000_000, min_significance=1000.0)
    assert est.significance < 1000


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        ({"max_delay_ps": 100, "resolution_ps": 1000}, CoincidenceError, "at least resolution_ps"),
        ({"max_delay_ps": 10_000, "resolution_ps": 0}, CoincidenceError, "must be positive"),
        ({"max_delay_ps": 10_000, "method": "fast"}, CoincidenceError, "method must be"),
        ({"max_delay_ps": 10_000, "min_significance": 0}, CoincidenceError, "min_significance"),
    ],
)
def test_bad_parameters_are_named(kwargs, exc, msg):
    a = np.arange(10, dtype=np.int64)
    with pytest.raises(exc, match=msg):
        find_delay(a, a, **kwargs)


def test_bad_arrays_are_named():
    good = np.arange(10, dtype=np.int64)
    with pytest.raises(CoincidenceError, match="times_b_ps decreases at index 2"):
        find_delay(good, np.array([1, 5, 3]), max_delay_ps=1000)
    with pytest.raises(CoincidenceError, match="times_a_ps must be integer"):
        find_delay(good.astype(float), good, max_delay_ps=1000)
    with pytest.raises(CoincidenceError, match="must be 1-D"):
        find_delay(good.reshape(2, 5), good, max_delay_ps=1000)
    with pytest.raises(NoSignificantPeakError, match="stream a has 0 tags"):
        find_delay(good[:0], good, max_delay_ps=1000)


def test_find_delay_in_batch_selects_channels():
    a, b = streams(8, duration_ps=S // 10, rate_a=1e5, rate_b=1e5, pair_rate=1e4, delay_ps=-3_000)
    batch = TagBatch.sorted(
        np.concatenate([a, b]), np.concatenate([np.full(a.size, 2), np.full(b.size, 5)])
    )
    est = find_delay_in_batch(batch, 2, 5, max_delay_ps=1_000_000, resolution_ps=100)
    assert abs(est.delay_ps + 3_000) <= 100
    est = find_delay_in_batch(batch, 5, 2, max_delay_ps=1_000_000, resolution_ps=100)
    assert abs(est.delay_ps - 3_000) <= 100
    with pytest.raises(NoSignificantPeakError, match="channel 7 has 0 tags"):
        find_delay_in_batch(batch, 7, 2, max_delay_ps=1_000_000)
    with pytest.raises(CoincidenceError, match="both 2"):
        find_delay_in_batch(batch, 2, 2, max_delay_ps=1_000_000)


@settings(max_examples=10, deadline=None)
@given(delay=st.integers(-20_000_000, 20_000_000), seed=st.integers(0, 1000))
def test_random_delays_are_found(delay, seed):
    a, b = streams(seed, duration_ps=S // 20, rate_a=1e5, rate_b=1e5, pair_rate=1e4, delay_ps=delay)
    est = find_delay(a, b, max_delay_ps=25_000_000, resolution_ps=500)
    assert abs(est.delay_ps - delay) <= 500


@pytest.mark.parametrize(("ppm", "offset"), [(7.3, 12_345_678), (-21.0, -3_210_000)])
def test_independent_clocks_offset_and_drift(ppm, offset):
    a, b = streams(
        9,
        duration_ps=S,
        rate_a=1e5,
        rate_b=1e5,
        pair_rate=1e4,
        delay_ps=0,
        jitter_ps=100.0,
        ppm=ppm,
        offset=offset,
    )
    fit = track_drift(a, b, window_ps=S // 20, max_delay_ps=20_000_000, resolution_ps=1000)
    assert fit.drift_ppm == pytest.approx(ppm, abs=0.02)
    assert fit.offset0_ps == pytest.approx(offset, abs=2000)
    assert fit.offset_at(0.5 * S) == pytest.approx(offset + ppm * 0.5 * S * 1e-6, abs=2000)
    # B's tags on A's clock: the pair peak sits at zero delay, sharply
    aligned = fit.to_clock_a(b)
    assert np.all(np.diff(aligned) >= 0)
    est = find_delay(a, aligned, max_delay_ps=100_000, resolution_ps=100)
    assert abs(est.delay_ps) <= 100


def test_drift_tracker_streaming_windows():
    ppm, offset = 4.0, 2_000_000
    a, b = streams(
        10,
        duration_ps=S // 2,
        rate_a=1e5,
        rate_b=1e5,
        pair_rate=1e4,
        delay_ps=0,
        jitter_ps=50.0,
        ppm=ppm,
        offset=offset,
    )
    # 20 ms windows: a 4 ppm drift moves the peak 80 ns within a window, so bin at 50 ns
    tracker = DriftTracker(max_delay_ps=5_000_000, resolution_ps=50_000)
    window = S // 50
    with pytest.raises(CoincidenceError, match="at least 2 windows"):
        tracker.fit()
    for k in range(25):
        e0, e1 = k * window, (k + 1) * window
        wa = a[(a >= e0) & (a < e1)]
        wb = b[(b >= e0) & (b < e1)]
        assert tracker.add_window(wa, wb, e0, e1) is not None
    assert tracker.n_windows == 25
    assert tracker.drift_ppm == pytest.approx(ppm, abs=0.2)
    assert tracker.offset0_ps == pytest.approx(offset, abs=30_000)
    est = find_delay(a, tracker.correct(b), max_delay_ps=1_000_000, resolution_ps=10_000)
    assert abs(est.delay_ps) <= 50_000


def test_drift_tracker_skips_dark_windows():
    rng = np.random.default_rng(11)
    tracker = DriftTracker(max_delay_ps=1_000_000)
    noise = np.sort(rng.integers(0, S // 100, 200))
    assert tracker.add_window(noise, noise + 17, 0, S // 100) is not None
    assert tracker.add_window(noise[:3], np.sort(rng.integers(0, S // 100, 3)), 0, S) is None
    assert tracker.skipped_windows == 1


def test_track_drift_needs_two_windows():
    a = np.arange(100, dtype=np.int64) * 1000
    with pytest.raises(CoincidenceError, match="less than two windows"):
        track_drift(a, a, window_ps=10**9, max_delay_ps=1000)


@pytest.mark.parametrize(("k", "lam"), [(0, 2.0), (1, 0.01), (5, 0.5), (30, 20.0), (3, 10.0)])
def test_poisson_tail(k, lam):
    direct = 1.0 - sum(math.exp(-lam) * lam**j / math.factorial(j) for j in range(k))
    assert poisson_sf(k, lam) == pytest.approx(direct, rel=1e-9, abs=1e-15)


def test_a_single_coincidence_is_not_a_peak():
    a = np.array([10**9], np.int64)
    with pytest.raises(NoSignificantPeakError, match="expected by chance"):
        find_delay(a, a + 7, max_delay_ps=100_000, resolution_ps=10)
    # ten of them, and nothing else, is a clean peak
    a = np.arange(10, dtype=np.int64) * 10**9
    assert find_delay(a, a + 7_000, max_delay_ps=100_000, resolution_ps=100).delay_ps == 7_000


def _drift_run(seed):
    ppm, offset = 7.3, 12_345_678
    a, b = streams(
        seed,
        duration_ps=S // 10,
        rate_a=1e5,
        rate_b=1e5,
        pair_rate=1e4,
        delay_ps=0,
        jitter_ps=100.0,
        ppm=ppm,
        offset=offset,
    )
    fit = track_drift(a, b, window_ps=S // 100, max_delay_ps=20_000_000, resolution_ps=100)
    window_err = fit.window_offsets_ps - (offset + ppm * 1e-6 * fit.window_times_ps)
    return fit, ppm, offset, window_err


def test_track_drift_window_offsets_at_the_limit():
    # 100 pairs per 10 ms window, 100 ps pair jitter: limit 10 ps per window. The old
    # 3-bin centroid at 100 ps bins scattered 25 ps rms here
    errs, uncs = [], []
    for seed in range(8):
        fit, *_, window_err = _drift_run(seed)
        errs.append(window_err)
        uncs.append(fit.window_uncertainties_ps)
    rms = float(np.sqrt(np.mean(np.concatenate(errs) ** 2)))
    assert rms <= 1.5 * 10.0
    assert float(np.median(np.concatenate(uncs))) == pytest.approx(10.0, rel=0.2)


def test_track_drift_uncertainties_are_calibrated():
    pulls_offset, pulls_ppm = [], []
    for seed in range(50):
        fit, ppm, offset, _ = _drift_run(seed)
        pulls_offset.append((fit.offset0_ps - offset) / fit.offset0_uncertainty_ps)
        pulls_ppm.append((fit.drift_ppm - ppm) / fit.drift_uncertainty_ppm)
    for p in (pulls_offset, pulls_ppm):
        assert 0.8 <= float(np.std(p)) <= 1.25
        assert abs(float(np.mean(p))) < 0.5


def test_fit_uncertainties_without_window_uncertainties_come_from_the_scatter():
    tracker = DriftTracker(max_delay_ps=1000)
    t = np.arange(10) * 1e9
    rng = np.random.default_rng(0)
    for ti, yi in zip(t, 500.0 + 2e-6 * t + rng.normal(0, 30.0, t.size), strict=True):
        tracker.add_offset(ti, yi)
    fit = tracker.fit()
    assert 5.0 < fit.offset0_uncertainty_ps < 40.0
    assert fit.drift_uncertainty_ppm > 0
    # with uncertainties given, the fit is weighted and says how sure it is
    tracker = DriftTracker(max_delay_ps=1000)
    for ti in t:
        tracker.add_offset(ti, 500.0 + 2e-6 * ti, uncertainty_ps=10.0)
    fit = tracker.fit()
    assert fit.offset0_ps == pytest.approx(500.0)
    assert fit.offset0_uncertainty_ps == pytest.approx(10.0 * math.sqrt(1 / 10 + 4.5**2 / 82.5))
