import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coincidence import (
    CoincidenceError,
    CorrelationHistogram,
    TagBatch,
    TagBatchError,
    generate_pairs,
)

MS = 10**9


def reference(batch, a, b, bin_ps, range_ps, delay_ps):
    """Every (a, b) difference by brute force, binned with integer floor division."""
    ta = batch.timestamps[batch.channels == a]
    tb = batch.timestamps[batch.channels == b]
    counts = np.zeros(2 * range_ps // bin_ps, np.int64)
    lo = np.searchsorted(tb, ta + delay_ps - range_ps, side="left")
    hi = np.searchsorted(tb, ta + delay_ps + range_ps, side="left")
    for t, i, j in zip(ta, lo, hi, strict=True):
        dt = tb[i:j] - t - delay_ps
        np.add.at(counts, (dt + range_ps) // bin_ps, 1)
    return counts


def run(batches, *args):
    h = CorrelationHistogram(*args)
    for b in batches:
        h.process(b)
    return h.result()


def test_peak_at_the_delay_and_matches_reference():
    batch = generate_pairs(
        duration_ps=20 * MS,
        pair_rate_hz=2e5,
        noise_rate_hz=2e6,
        n_channels=3,
        pair_channels=[(0, 2)],
        delays_ps=[100_000, 0, 4_100_000],
        jitter_ps=50.0,
        seed=2,
    )
    args = (0, 2, 100, 20_000, 4_000_000)
    rep = run([batch], *args)
    assert np.array_equal(rep.counts, reference(batch, 0, 2, 100, 20_000, 4_000_000))
    assert rep.bin_edges_ps[0] == -20_000 and rep.bin_edges_ps[-1] == 20_000
    assert rep.counts.size == 400 and rep.bin_edges_ps.size == 401
    assert abs(rep.bin_centers_ps[np.argmax(rep.counts)]) < 200
    assert rep.counts.max() > 10 * np.median(rep.counts)
    pieces = run(batch.split_at(range(MS, 20 * MS, 3 * MS + 7)), *args)
    assert np.array_equal(pieces.counts, rep.counts)
    assert pieces.duration_ps == rep.duration_ps == 20 * MS


def test_bins_are_half_open():
    # t_a = 2000; dt = t_b - t_a: -1000 (first bin), 0, 999 (last bin) count; +1000 does not
    ts = np.array([2_000, 1_000, 2_000, 3_000, 2_999])
    batch = TagBatch.sorted(ts, np.array([0, 1, 1, 1, 1]), 0, 10**4)
    assert run([batch], 0, 1, 500, 1_000, 0).counts.tolist() == [1, 0, 1, 1]
    # delay 1000: dt - 1000 = -2000 (out), -1000, -1, 0
    assert run([batch], 0, 1, 500, 1_000, 1_000).counts.tolist() == [1, 1, 1, 0]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tags=st.lists(st.tuples(st.integers(0, 10**7 - 1), st.integers(0, 2)), max_size=40),
    bin_ps=st.sampled_from([1, 7, 1_000]),
    n_half=st.integers(1, 50),
    delay=st.integers(-3 * 10**6, 3 * 10**6),
    cuts=st.lists(st.integers(0, 10**7), max_size=6),
)
def test_batch_split_invariance(tags, bin_ps, n_half, delay, cuts):
    range_ps = bin_ps * n_half * 1_000 if bin_ps < 1_000 else bin_ps * n_half
    ts = np.array([t for t, _ in tags], np.int64)
    ch = np.array([c for _, c in tags], np.int64)
    batch = TagBatch.sorted(ts, ch, 0, 10**7)
    cuts = cuts + cuts[:1] + [int(t) + 1 for t in ts[:3]]
    args = (2, 0, bin_ps, range_ps, delay)
    want = reference(batch, 2, 0, bin_ps, range_ps, delay)
    assert np.array_equal(run([batch], *args).counts, want)
    assert np.array_equal(run(batch.split_at(cuts), *args).counts, want)


def test_pair_at_the_horizon_across_a_cut():
    # dt range [delay - R, delay + R) = [4000, 6000): the farthest pair is 5999 ps apart
    batch = TagBatch(np.array([4_001, 10_000]), np.array([0, 1]), 0, 20_000)
    rep = run(batch.split(10_000), 0, 1, 1_000, 1_000, 5_000)
    assert rep.counts.tolist() == [0, 1]
    batch = TagBatch(np.array([4_000, 10_000]), np.array([0, 1]), 0, 20_000)
    assert run(batch.split(10_000), 0, 1, 1_000, 1_000, 5_000).counts.sum() == 0


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        ((0, 1, 300, 1_000), "range_ps 1000 is not a multiple of bin_width_ps 300"),
        ((0, 1, 0, 1_000), "bin_width_ps must be > 0"),
        ((0, 1, 100, 0), "range_ps must be > 0"),
        ((0, 0, 100, 1_000), "must differ"),
        ((0, 256, 100, 1_000), "channel_b must be in 0..255"),
        ((0, 1, 1, 10**8), "bins"),
        ((0, 1, 100, 1_000, 2 * MS), "delay_ps"),
        ((0, 1, 1.5, 1_000), "bin_width_ps must be an integer"),
    ],
)
def test_bad_arguments_are_named(args, msg):
    with pytest.raises(CoincidenceError, match=msg):
        CorrelationHistogram(*args)


def test_overlapping_batches_are_refused():
    h = CorrelationHistogram(0, 1, 10, 100)
    h.process(TagBatch.empty(0, 100))
    with pytest.raises(TagBatchError, match="must not overlap"):
        h.process(TagBatch.empty(50, 200))
