"""Reference-free clock sync: acquisition from photon timing alone, tracking, re-acquisition."""

import numpy as np
import pytest

from coincidence import (
    ClockTracker,
    CoincidenceError,
    NoSignificantPeakError,
    acquire_clock,
    find_delay,
    generate_two_clocks,
)

S = 10**12


def truth(lock, offset, ppm):
    return offset + ppm * 1e-6 * lock.reference_ps


@pytest.mark.parametrize(
    ("offset", "ppm", "seed"), [(7.3e11, 63.0, 0), (-9.1e11, -97.0, 1), (123_456_789.0, 0.5, 2)]
)
def test_lock_from_ten_seconds_at_100_kcps_and_5_percent_heralding(offset, ppm, seed):
    ta, tb = generate_two_clocks(
        duration_ps=10 * S,
        singles_rate_hz=1e5,
        heralding=0.05,
        offset_ps=offset,
        ppm=ppm,
        jitter_ps=100.0,
        seed=seed,
    )
    lock = acquire_clock(ta, tb, max_offset_ps=1e12, max_ppm=100.0)
    assert lock.significance >= 6.0
    # at the statistical limit: ~5e4 pairs of 141 ps jitter
    assert 0.2 < lock.offset_uncertainty_ps < 3.0
    assert 0 < lock.ppm_uncertainty < 1e-5
    assert abs(lock.offset_ps - truth(lock, offset, ppm)) <= 5 * lock.offset_uncertainty_ps
    assert abs(lock.ppm - ppm) <= 5 * lock.ppm_uncertainty
    # B's tags mapped onto A's clock: the pairs line up at zero delay
    aligned = lock.to_clock_a(tb)
    est = find_delay(ta, aligned, max_delay_ps=10_000, resolution_ps=50)
    assert abs(est.delay_fit_ps) <= 5 * est.delay_uncertainty_ps


def test_uncorrelated_streams_give_no_lock():
    rng = np.random.default_rng(5)
    ta = np.sort(rng.integers(0, 5 * S, 200_000))
    tb = np.sort(rng.integers(0, 5 * S, 200_000))
    with pytest.raises(NoSignificantPeakError, match=r"no clock lock: .*frequencies .* ppm apart"):
        acquire_clock(ta, tb, max_offset_ps=1e11, max_ppm=20.0)


def test_bad_input_is_named():
    good = np.arange(100, dtype=np.int64) * 10**9
    with pytest.raises(CoincidenceError, match="times_b_ps decreases"):
        acquire_clock(good, good[::-1])
    with pytest.raises(CoincidenceError, match="max_ppm"):
        acquire_clock(good, good, max_ppm=-1.0)
    with pytest.raises(CoincidenceError, match="max_offset_ps"):
        acquire_clock(good, good, max_offset_ps=0)
    with pytest.raises(NoSignificantPeakError, match="too short for an offset range"):
        acquire_clock(good, good, max_offset_ps=1e12)
    with pytest.raises(CoincidenceError, match="track_windows"):
        ClockTracker(track_windows=1)
    with pytest.raises(CoincidenceError, match="heralding"):
        generate_two_clocks(duration_ps=S, singles_rate_hz=1e3, heralding=1.5)


def _feed(tracker, ta, tb, k0, k1, states):
    for k in range(k0, k1):
        a = ta[(ta >= k * S) & (ta < (k + 1) * S)]
        b = tb[(tb >= k * S) & (tb < (k + 1) * S)]
        states.append(tracker.feed(a, b))


def test_tracker_locks_tracks_loses_and_reacquires():
    off1, ppm1 = 4.2e11, -41.0
    ta, tb = generate_two_clocks(
        duration_ps=16 * S,
        singles_rate_hz=1e5,
        heralding=0.05,
        offset_ps=off1,
        ppm=ppm1,
        jitter_ps=100.0,
        seed=3,
    )
    tracker = ClockTracker(acquire_span_ps=8 * S, max_offset_ps=1e12, max_ppm=100.0)
    states = []
    _feed(tracker, ta, tb, 0, 16, states)
    locked = [k for k, s in enumerate(states) if s.state == "locked"]
    assert locked and locked[0] <= 10  # locked within 10 s of data
    last = states[-1]
    assert last.state == "locked" and last.windows >= 6
    assert abs(last.offset_ps - (off1 + ppm1 * 1e-6 * last.reference_ps)) <= 5 * (
        last.offset_uncertainty_ps
    )
    assert abs(last.ppm - ppm1) <= 5 * last.ppm_uncertainty
    # the clock of B is reset: a new offset and frequency; the lock is lost, then found again
    off2, ppm2 = -3.3e11, 12.0
    ta2, tb2 = generate_two_clocks(
        duration_ps=14 * S,
        singles_rate_hz=1e5,
        heralding=0.05,
        offset_ps=off2,
        ppm=ppm2,
        jitter_ps=100.0,
        seed=4,
        begin_ps=16 * S,
    )
    # times before what was fed already are cut (the tracker wants each side in order)
    ta2 = ta2[ta2 >= 16 * S]
    tb2 = tb2[tb2 >= max(16 * S, int(tb[-1]) + 1)]
    states2 = []
    _feed(tracker, ta2, tb2, 16, 30, states2)
    kinds = [s.state for s in states2]
    assert "lost" in kinds
    assert kinds.index("lost") <= 4  # three empty windows, then lost
    assert tracker.losses == 1 and tracker.acquisitions == 2
    final = states2[-1]
    assert final.state == "locked"
    assert (
        abs(final.offset_ps - (off2 + ppm2 * 1e-6 * (final.reference_ps - 16 * S)))
        <= 5 * (final.offset_uncertainty_ps) + 1.0
    )
    assert abs(final.ppm - ppm2) <= 5 * final.ppm_uncertainty + 1e-6


def test_tracker_refuses_tags_out_of_order():
    tracker = ClockTracker()
    tracker.feed(np.array([10, 20]), np.array([5, 30]))
    with pytest.raises(CoincidenceError, match="times_a_ps starts at 15 ps, before"):
        tracker.feed(np.array([15]), np.array([40]))


@pytest.mark.parametrize("max_ppm", [0.0, 5.0])
def test_narrow_frequency_range(max_ppm):
    # a known-good frequency (max_ppm 0: offset only) or a narrow range keeps the FFTs small
    ta, tb = generate_two_clocks(
        duration_ps=5 * S,
        singles_rate_hz=1e5,
        heralding=0.05,
        offset_ps=-2.5e8,
        ppm=0.0,
        jitter_ps=50.0,
        seed=7,
    )
    lock = acquire_clock(ta, tb, max_offset_ps=1e9, max_ppm=max_ppm)
    assert abs(lock.offset_ps + 2.5e8) <= 5 * lock.offset_uncertainty_ps
    assert abs(lock.ppm) <= 5 * lock.ppm_uncertainty
