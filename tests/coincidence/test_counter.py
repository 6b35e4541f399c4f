import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coincidence import (
    ChannelError,
    CoincidenceCounter,
    CoincidenceError,
    TagBatch,
    TagBatchError,
    generate_pairs,
)

MS = 10**9  # ps


def reference(batch, n, window_ps, delays):
    """Straightforward numpy: per channel pair, searchsorted on shifted times."""
    h = window_ps // 2
    t, c = batch.timestamps, batch.channels
    shifted = [t[c == i] - int(delays[i]) for i in range(n)]  # sorted within a channel
    m = np.zeros((n, n), np.int64)
    for i in range(n):
        for j in range(i + 1, n):
            lo = np.searchsorted(shifted[j], shifted[i] - h, side="left")
            hi = np.searchsorted(shifted[j], shifted[i] + h, side="right")
            m[i, j] = m[j, i] = int((hi - lo).sum())
    return np.bincount(c, minlength=n), m


def run(batches, n, window_ps, delays):
    counter = CoincidenceCounter(n, window_ps, delays)
    for b in batches:
        counter.process(b)
    return counter.result()


BBM92_DELAYS = [1_000, 2_500, -800, 300] + [5_000_000 + x for x in (700, -1_200, 2_100, 0)]


@pytest.mark.parametrize(
    "delays",
    [
        BBM92_DELAYS,
        [0] * 8,
        [0, 3, 7, 2, -5, 1, 9, 4],
        [-MS, MS, 0, 500_000_000, -7_000, 7_000, 123_456_789, -987_654_321],
        [0, 9_000, 18_000, 27_000, 36_000, 45_000, 54_000, 63_000],  # a chain of close delays
    ],
)
def test_matches_numpy_reference(delays):
    batch = generate_pairs(
        duration_ps=20 * MS,
        pair_rate_hz=2e6,
        noise_rate_hz=3e6,
        n_channels=8,
        pair_channels=[(0, 4), (1, 5), (2, 6), (3, 7), (0, 1)],
        delays_ps=delays,
        jitter_ps=300.0,
        seed=7,
    )
    singles, m = reference(batch, 8, 1000, delays)
    whole = run([batch], 8, 1000, delays)
    assert np.array_equal(whole.singles, singles)
    assert np.array_equal(whole.coincidences, m)
    assert m[0, 4] > 1000  # the known pairs were found
    pieces = run(
        batch.split_at(np.linspace(0, 20 * MS, 37)[1:-1].astype(np.int64)), 8, 1000, delays
    )
    assert np.array_equal(pieces.coincidences, m)
    assert np.array_equal(pieces.singles, singles)


@st.composite
def streams(draw):
    n = draw(st.integers(2, 4))
    window = draw(st.integers(1, 3_000))
    delays = draw(st.lists(st.integers(-MS, MS), min_size=n, max_size=n))
    if draw(st.booleans()):  # also exercise close delays (one fast-kernel group)
        delays = [d % 2_000 for d in delays]
    span = 4 * MS
    events = draw(st.lists(st.integers(0, span), max_size=15))
    tags = []
    for e in events:
        for c in draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3)):
            jitter = draw(st.integers(-window, window))
            tags.append((e + delays[c] + jitter + 2 * MS, c))
    noise = draw(st.lists(st.tuples(st.integers(0, 8 * MS), st.integers(0, n - 1)), max_size=10))
    tags += noise
    tags = [(t, c) for t, c in tags if 0 <= t < 8 * MS]
    ts = np.array([t for t, _ in tags], np.int64)
    ch = np.array([c for _, c in tags], np.int64)
    batch = TagBatch.sorted(ts, ch, 0, 8 * MS)
    # cut points: anywhere, next to tags (inside windows) and repeated (empty batches)
    near = [t + draw(st.integers(-window, window)) for t, _ in tags[:6]]
    cuts = draw(st.lists(st.integers(0, 8 * MS), max_size=6)) + near
    cuts = [min(max(x, 0), 8 * MS) for x in cuts]
    cuts += cuts[:1]
    return batch, n, window, delays, cuts


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_batch_split_invariance(case):
    batch, n, window, delays, cuts = case
    whole = run([batch], n, window, delays)
    pieces = run(batch.split_at(cuts), n, window, delays)
    singles, m = reference(batch, n, window, delays)
    assert np.array_equal(whole.coincidences, m)
    assert np.array_equal(pieces.coincidences, m)
    assert np.array_equal(pieces.singles, singles)
    assert pieces.duration_ps == whole.duration_ps == batch.duration_ps
    assert np.array_equal(pieces.accidentals, whole.accidentals)
    # the counter's internal chunking (normally 2**20 tags) must not matter either
    chunked = CoincidenceCounter(n, window, delays)
    chunked.chunk_tags = 3
    chunked.process(batch)
    assert np.array_equal(chunked.result().coincidences, m)


def test_window_boundary_is_inclusive_at_half_width():
    # window 1000: |dt| <= 500 counts; window 1001: 2 * 501 > 1001, still 500 is the limit
    def pair(dt, window):
        b = TagBatch(np.array([0, dt]), np.array([0, 1]), 0, 10_000)
        return int(run([b], 2, window, None).coincidences[0, 1])

    assert pair(500, 1000) == 1
    assert pair(501, 1000) == 0
    assert pair(501, 1001) == 0
    assert pair(501, 1002) == 1
    assert pair(0, 1) == 1
    assert pair(1, 1) == 0
    assert pair(1, 2) == 1


def test_delays_are_subtracted_with_sign():
    b = TagBatch(np.array([0, 5_400]), np.array([0, 1]), 0, 10_000)
    assert run([b], 2, 1000, [0, 5_000]).coincidences[0, 1] == 1
    assert run([b], 2, 1000, [0, -5_000]).coincidences[0, 1] == 0
    assert run([b], 2, 1000, [-5_000, 0]).coincidences[0, 1] == 1


def test_triples_count_three_pairs_and_same_channel_never_pairs():
    ts = np.array([100, 100, 120, 130, 135])
    ch = np.array([0, 1, 2, 0, 0])
    rep = run([TagBatch(ts, ch, 0, 1_000)], 3, 100, None)
    # every tag is within 50 ps of every other; pairs only across channels:
    # ch0 x ch1: 3 x 1, ch0 x ch2: 3 x 1, ch1 x ch2: 1
    expected = np.array([[0, 3, 3], [3, 0, 1], [3, 1, 0]])
    assert np.array_equal(rep.coincidences, expected)
    assert np.array_equal(rep.coincidences, rep.coincidences.T)
    assert rep.singles.tolist() == [3, 1, 1]
    assert np.all(np.diag(rep.accidentals) == 0)


def test_report_rates_accidentals_and_car_formula():
    ts = np.array([0, 10, 500_000, 700_000])
    ch = np.array([0, 1, 0, 1])
    rep = run([TagBatch(ts, ch, 0, 10**6)], 2, 1000, None)
    assert rep.duration_s == pytest.approx(1e-6)
    assert rep.singles_rate_hz.tolist() == pytest.approx([2e6, 2e6])
    assert rep.coincidence_rate_hz[0, 1] == pytest.approx(1e6)
    # R_i R_j L T = (2 / 1e6 ps) (2 / 1e6 ps) 1001 lags 1e6 ps = 0.004004
    assert rep.accidentals[0, 1] == pytest.approx(0.004004)
    assert rep.car[0, 1] == pytest.approx(1 / 0.004004)
    assert np.isnan(rep.car[0, 0])


def test_uncorrelated_streams_match_accidentals():
    delays = [0, 3_000, 2_000_000, -5_000_000]
    batch = generate_pairs(
        duration_ps=200 * MS,
        pair_rate_hz=0.0,
        noise_rate_hz=1e6,
        n_channels=4,
        pair_channels=[],
        delays_ps=delays,
        seed=11,
    )
    rep = run(batch.split_at([50 * MS, 120 * MS]), 4, 2_000, delays)
    iu = np.triu_indices(4, 1)
    acc = rep.accidentals[iu]
    assert np.all(acc == pytest.approx(400, rel=0.05))  # 1e6 * 1e6 * 2e-9 * 0.2
    z = (rep.coincidences[iu] - acc) / np.sqrt(acc)
    assert np.all(np.abs(z) < 5), z
    assert np.all(np.abs(rep.car[iu] - 1) < 5 / np.sqrt(acc))


def test_gaps_count_only_measured_time_and_pairs_across_gaps_still_count():
    a = TagBatch(np.array([990]), np.array([0]), 0, 1_000)
    b = TagBatch(np.array([5_000]), np.array([1]), 4_500, 6_000)
    rep = run([a, b], 2, 10, [0, 4_010])
    assert rep.duration_ps == 1_000 + 1_500
    assert rep.coincidences[0, 1] == 1


def test_result_does_not_change_later_results():
    batch = generate_pairs(
        duration_ps=5 * MS,
        pair_rate_hz=5e6,
        noise_rate_hz=1e6,
        n_channels=8,
        pair_channels=[(0, 4), (1, 5)],
        delays_ps=BBM92_DELAYS,
        jitter_ps=200,
        seed=3,
    )
    parts = batch.split_at([1 * MS, 2 * MS + 17, 3 * MS])
    c1 = CoincidenceCounter(8, 1000, BBM92_DELAYS)
    c2 = CoincidenceCounter(8, 1000, BBM92_DELAYS)
    seen = []
    for p in parts:
        c1.process(p)
        c2.process(p)
        seen.append(c1.result().coincidences.sum())
    assert seen == sorted(seen) and seen[0] > 0
    assert np.array_equal(c1.result().coincidences, c2.result().coincidences)
    c1.reset()
    assert c1.result().coincidences.sum() == 0 and c1.result().duration_ps == 0


def test_held_back_tags_stay_within_the_delay_horizon():
    delays = BBM92_DELAYS
    counter = CoincidenceCounter(8, 1000, delays)
    assert counter.horizon_ps == 500 + 5_002_100 - (-800)
    batch = generate_pairs(
        duration_ps=50 * MS,
        pair_rate_hz=2e6,
        noise_rate_hz=1e6,
        n_channels=8,
        pair_channels=[(0, 4), (1, 5), (2, 6), (3, 7)],
        delays_ps=delays,
        seed=5,
    )
    step = 100_000_000  # 0.1 ms batches
    worst = 0
    for part in batch.split_at(range(step, 50 * MS, step)):
        counter.process(part)
        in_horizon = int((batch.timestamps >= part.end_ps - counter.horizon_ps).sum())
        in_horizon -= int((batch.timestamps >= part.end_ps).sum())
        assert counter.held_back_tags == in_horizon
        worst = max(worst, counter.held_back_tags)
    # ~10 Mtags/s over a ~5 us horizon: some tens of tags, never the 0.1 ms batch (~1000)
    assert 0 < worst < 300
    _, m = reference(batch, 8, 1000, delays)
    assert np.array_equal(counter.result().coincidences, m)


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        ((2, 0, None), "window_ps must be > 0"),
        ((2, -5, None), "window_ps must be > 0"),
        ((2, 1.5, None), "window_ps must be an integer"),
        ((0, 100, None), "n_channels must be in 1..256"),
        ((257, 100, None), "n_channels must be in 1..256"),
        ((2, 100, [0]), "delays_ps must have one entry per channel"),
        ((2, 100, [0, MS + 1]), r"delays_ps\[1\] = 1000000001 ps exceeds"),
        ((2, 100, [-MS - 1, 0]), r"delays_ps\[0\]"),
        ((2, 100, [0, 0.5]), "whole picoseconds"),
    ],
)
def test_bad_constructor_arguments_are_named(args, msg):
    with pytest.raises(CoincidenceError, match=msg):
        CoincidenceCounter(*args)


def test_channel_outside_configured_count_is_refused():
    counter = CoincidenceCounter(2, 100)
    with pytest.raises(ChannelError, match="CoincidenceCounter: channel 2 at index 1"):
        counter.process(TagBatch(np.array([1, 2]), np.array([0, 2]), 0, 10))


def test_overlapping_batches_are_refused():
    counter = CoincidenceCounter(2, 100)
    counter.process(TagBatch.empty(0, 1_000))
    with pytest.raises(TagBatchError, match="begins at 999 ps, before the previous batch's end"):
        counter.process(TagBatch.empty(999, 2_000))
    counter.process(TagBatch.empty(1_000, 2_000))  # touching is fine
    assert counter.result().duration_ps == 2_000


@pytest.mark.parametrize("d", [3_000, -3_000])
def test_pair_exactly_at_the_horizon_across_a_cut(d):
    # the earliest possible partner: raw distance h + max(delay) - min(delay), |dt| = h
    h, horizon = 500, 500 + 3_000
    if d > 0:  # the later tag is on the late channel 1
        ts, ch = np.array([10_000 - horizon, 10_000]), np.array([0, 1])
    else:
        ts, ch = np.array([10_000 - horizon, 10_000]), np.array([1, 0])
    whole = TagBatch(ts, ch, 0, 20_000)
    assert run([whole], 2, 2 * h, [0, d]).coincidences[0, 1] == 1
    counter = CoincidenceCounter(2, 2 * h, [0, d])
    assert counter.horizon_ps == horizon
    assert run(whole.split(10_000), 2, 2 * h, [0, d]).coincidences[0, 1] == 1
    # one ps further apart is no pair
    far = TagBatch(ts - np.array([1, 0]), ch, 0, 20_000)
    assert run(far.split(10_000), 2, 2 * h, [0, d]).coincidences[0, 1] == 0
