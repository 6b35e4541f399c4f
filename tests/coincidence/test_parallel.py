"""count_parallel: time ranges counted in threads and stitched equal one counter exactly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_counter import BBM92_DELAYS, MS, reference, streams
from test_linear_time import bursty_streams

from coincidence import (
    ChannelError,
    CoincidenceCounter,
    CoincidenceError,
    TagBatch,
    TagBatchError,
    count_parallel,
    count_ranges_parallel,
    generate_pairs,
    iter_npz_range,
    split_npz,
    write_npz,
)


def one_counter(batches: list[TagBatch], n: int, window: int, delays: list[int]):
    c = CoincidenceCounter(n, window, delays)
    for b in batches:
        c.process(b)
    return c.result()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.integers(1, 12), st.integers(2, 3))
def test_random_ranges_stitch_exactly(case, segment_tags: int, workers: int) -> None:
    batch, n, window, delays, cuts = case
    parts = batch.split_at(cuts)
    got = count_parallel(parts, n, window, delays, workers=workers, segment_tags=segment_tags)
    singles, m = reference(batch, n, window, delays)
    assert np.array_equal(got.coincidences, m)
    assert np.array_equal(got.singles, singles)
    assert got.duration_ps == batch.duration_ps
    want = one_counter(parts, n, window, delays)
    assert np.array_equal(got.accidentals, want.accidentals)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bursty_streams(), st.integers(1, 30))
def test_bursts_straddling_ranges_stitch_exactly(case, segment_tags: int) -> None:
    batch, n, window, delays, cuts, _ = case
    got = count_parallel(batch.split_at(cuts), n, window, delays, workers=2,
                         segment_tags=segment_tags)  # fmt: skip
    assert np.array_equal(got.coincidences, reference(batch, n, window, delays)[1])


def test_a_real_stream_in_many_ranges_equals_one_pass() -> None:
    batch = generate_pairs(
        duration_ps=20 * MS, pair_rate_hz=2e6, noise_rate_hz=1e6, n_channels=8,
        pair_channels=[(0, 4), (1, 5), (2, 6), (3, 7)], delays_ps=BBM92_DELAYS, jitter_ps=200,
        seed=9,
    )  # fmt: skip
    parts = batch.split_at(range(MS, 20 * MS, MS))
    want = one_counter(parts, 8, 1000, BBM92_DELAYS)
    for workers in (1, 2, 4):
        got = count_parallel(parts, 8, 1000, BBM92_DELAYS, workers=workers, segment_tags=5_000)
        assert np.array_equal(got.coincidences, want.coincidences)
        assert np.array_equal(got.singles, want.singles)
        assert got.duration_ps == want.duration_ps
    assert want.coincidences[0, 4] > 5_000


def test_bad_input_is_named() -> None:
    b = TagBatch(np.array([1, 2]), np.array([0, 3]), 0, 10)
    with pytest.raises(ChannelError, match="count_parallel: channel 3 at index 1"):
        count_parallel([b], 2, 100, workers=2)
    with pytest.raises(TagBatchError, match="before the previous batch's end"):
        count_parallel([TagBatch.empty(0, 100), TagBatch.empty(50, 200)], 2, 100, workers=2,
                       segment_tags=1)  # fmt: skip
    with pytest.raises(CoincidenceError, match="workers must be an integer >= 1"):
        count_parallel([b], 4, 100, workers=0)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.integers(1, 3))
def test_ranges_read_and_counted_by_workers_stitch_exactly(case, workers: int) -> None:
    # random cuts make ranges of any length, some shorter than the horizon or empty
    batch, n, window, delays, cuts = case
    parts = batch.split_at(cuts)
    got = count_ranges_parallel([lambda p=p: [p] for p in parts], n, window, delays,
                                workers=workers)  # fmt: skip
    singles, m = reference(batch, n, window, delays)
    assert np.array_equal(got.coincidences, m)
    assert np.array_equal(got.singles, singles)
    assert got.duration_ps == batch.duration_ps


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bursty_streams(), st.integers(1, 7))
def test_an_npz_split_in_time_ranges_counts_like_one_pass(case, n_ranges: int) -> None:
    import tempfile
    from pathlib import Path

    batch, n, window, delays, _, chunk = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.npz"
        write_npz(path, batch)
        ranges = split_npz(path, n_ranges)
        assert ranges[0].begin_ps == batch.begin_ps and ranges[-1].end_ps == batch.end_ps
        assert sum(r.stop - r.start for r in ranges) == len(batch)
        for a, b in itertools.pairwise(ranges):
            assert a.end_ps == b.begin_ps and a.stop == b.start
        got = count_ranges_parallel(
            [lambda r=r: iter_npz_range(r, chunk_records=chunk) for r in ranges],
            n, window, delays, workers=2,
        )  # fmt: skip
    singles, m = reference(batch, n, window, delays)
    assert np.array_equal(got.coincidences, m)
    assert np.array_equal(got.singles, singles)
    assert got.duration_ps == batch.duration_ps
