"""Counting and histograms cost O(tags x channels) on any input, and stay exact.

Bursts of equal (or nearly equal) timestamps, as a stuck tagger or a crafted file
gives, used to make the pair walks quadratic. These tests feed such bursts and
compare with naive references; the timing itself is a benchmark row
(``benchmarks/bench_coincidence.py``), never asserted here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_counter import reference

import coincidence._counter as counter_module
from coincidence import CoincidenceCounter, CorrelationHistogram, TagBatch


@contextlib.contextmanager
def pair_walk_budget(per_tag: int, base: int) -> Iterator[None]:
    """Shrink the fast kernels' step budget so the by-channel path runs on small inputs."""
    old = counter_module._BUDGET_STEPS_PER_TAG, counter_module._BUDGET_BASE_STEPS
    counter_module._BUDGET_STEPS_PER_TAG, counter_module._BUDGET_BASE_STEPS = per_tag, base
    try:
        yield
    finally:
        counter_module._BUDGET_STEPS_PER_TAG, counter_module._BUDGET_BASE_STEPS = old


def test_a_million_equal_timestamps_on_two_channels_are_counted_exactly() -> None:
    n = 1_000_000
    ts = np.full(n, 5_000, np.int64)
    ch = (np.arange(n) % 2).astype(np.uint8)
    counter = CoincidenceCounter(2, 1_000)
    counter.process(TagBatch(ts, ch, 0, 10_000))
    rep = counter.result()
    assert rep.singles.tolist() == [n // 2, n // 2]
    assert int(rep.coincidences[0, 1]) == n * n // 4  # every a-b pair, 2.5e11
    # split in the middle of the burst (the tail carries half a million equal tags)
    cut = TagBatch(ts, ch, 0, 10_000)
    split = CoincidenceCounter(2, 1_000)
    split.chunk_tags = 300_001
    split.process(cut)
    assert int(split.result().coincidences[0, 1]) == n * n // 4


def test_a_burst_across_batches_is_held_as_one_entry_per_channel() -> None:
    n = 200_000
    counter = CoincidenceCounter(3, 1_000, [0, 0, 3_000])
    counter.process(TagBatch(np.full(n, 1_000), np.arange(n) % 3, 0, 1_001))
    assert counter.held_back_tags == n
    assert counter.held_back_entries == 3  # memory does not grow with the burst
    late = TagBatch(np.array([1_400, 4_000]), np.array([1, 2]), 1_001, 10_000)
    counter.process(late)
    rep = counter.result()
    k = 66_667  # burst tags on channels 0 and 1 (channel 2 gets k - 1)
    assert rep.singles.tolist() == [k, k + 1, k]
    # the late ch1 tag (400 ps later) pairs with the k ch0 tags; the late ch2 tag (shifted
    # to 1000) with both bursts and the late ch1 tag; the ch2 burst (shifted to -2000) with none
    assert rep.coincidences[0, 1] == k * k + k
    assert rep.coincidences[0, 2] == k
    assert rep.coincidences[1, 2] == k + 1
    whole = TagBatch.concatenate([TagBatch(np.full(n, 1_000), np.arange(n) % 3, 0, 1_001), late])
    assert np.array_equal(rep.coincidences, reference(whole, 3, 1_000, [0, 0, 3_000])[1])


def test_a_zero_filled_stream_on_one_channel_has_no_pairs() -> None:
    counter = CoincidenceCounter(4, 1_000)
    counter.process(TagBatch(np.zeros(500_000, np.int64), np.zeros(500_000, np.uint8), 0, 1))
    rep = counter.result()
    assert rep.singles[0] == 500_000 and rep.coincidences.sum() == 0


@st.composite
def bursty_streams(draw: st.DrawFn) -> tuple[TagBatch, int, int, list[int], list[int], int]:
    n = draw(st.integers(2, 4))
    window = draw(st.integers(1, 2_000))
    delays = draw(st.lists(st.integers(-20_000, 20_000), min_size=n, max_size=n))
    tags: list[tuple[int, int]] = []
    for _ in range(draw(st.integers(0, 6))):  # bursts: many tags at one or a few times
        t0 = draw(st.integers(30_000, 200_000))
        spread = draw(st.sampled_from([0, 0, 3, window, 5 * window]))
        size = draw(st.integers(1, 60))
        offs = draw(st.lists(st.integers(0, spread), min_size=size, max_size=size))
        chans = draw(st.lists(st.integers(0, n - 1), min_size=size, max_size=size))
        tags += [(t0 + o, c) for o, c in zip(offs, chans, strict=True)]
    tags += draw(st.lists(st.tuples(st.integers(0, 250_000), st.integers(0, n - 1)), max_size=20))
    ts = np.array([t for t, _ in tags], np.int64)
    ch = np.array([c for _, c in tags], np.int64)
    batch = TagBatch.sorted(ts, ch, 0, 250_001)
    cuts = draw(st.lists(st.integers(0, 250_001), max_size=5))
    cuts += [t for t, _ in tags[: draw(st.integers(0, 3))]]  # cuts inside bursts
    chunk = draw(st.integers(1, 64))
    return batch, n, window, delays, cuts, chunk


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bursty_streams(), st.sampled_from([(16, 1024), (0, 0), (1, 5), (2, 40)]))
def test_bursts_are_counted_exactly_whatever_the_cuts_chunks_and_budget(
    case: tuple[TagBatch, int, int, list[int], list[int], int], budget: tuple[int, int]
) -> None:
    batch, n, window, delays, cuts, chunk = case
    singles, m = reference(batch, n, window, delays)
    with pair_walk_budget(*budget):  # (0, 0): every chunk by channel; others: aborts midway
        whole = CoincidenceCounter(n, window, delays)
        whole.process(batch)
        pieces = CoincidenceCounter(n, window, delays)
        pieces.chunk_tags = chunk
        for part in batch.split_at(cuts):
            pieces.process(part)
    assert np.array_equal(whole.result().coincidences, m)
    assert np.array_equal(pieces.result().coincidences, m)
    assert np.array_equal(pieces.result().singles, singles)
    assert pieces.held_back_entries <= pieces.held_back_tags


def histogram_reference(batch: TagBatch, a: int, b: int, bin_ps: int, rng: int, delay: int):
    """Every (a, b) pair by brute force."""
    ta = batch.timestamps[batch.channels == a]
    tb = batch.timestamps[batch.channels == b]
    dt = (tb[None, :] - ta[:, None]).ravel() - delay
    dt = dt[(dt >= -rng) & (dt < rng)]
    return np.bincount((dt + rng) // bin_ps, minlength=2 * rng // bin_ps)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bursty_streams(), st.integers(1, 700), st.integers(1, 12), st.integers(-3_000, 3_000))
def test_histogram_of_bursts_matches_brute_force_whatever_the_cuts(
    case: tuple[TagBatch, int, int, list[int], list[int], int],
    bin_ps: int,
    n_half: int,
    delay: int,
) -> None:
    batch, _, _, _, cuts, _ = case
    rng = bin_ps * n_half
    want = histogram_reference(batch, 0, 1, bin_ps, rng, delay)
    whole = CorrelationHistogram(0, 1, bin_ps, rng, delay)
    whole.process(batch)
    pieces = CorrelationHistogram(0, 1, bin_ps, rng, delay)
    for part in batch.split_at(cuts):
        pieces.process(part)
    assert np.array_equal(whole.result().counts, want)
    assert np.array_equal(pieces.result().counts, want)


def test_histogram_of_a_million_equal_timestamps_is_exact() -> None:
    n = 1_000_000
    batch = TagBatch(np.full(n, 7, np.int64), (np.arange(n) % 2).astype(np.uint8), 0, 8)
    hist = CorrelationHistogram(0, 1, 100, 10_000)
    hist.process(batch)
    counts = hist.result().counts
    assert counts[100] == n * n // 4 and counts.sum() == n * n // 4


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(0, 5_000), max_size=40),
    st.lists(st.integers(0, 5_000), max_size=40),
    st.integers(-3_000, 3_000),
    st.integers(1, 500),
    st.integers(1, 30),
    st.integers(0, 2**62 - 10_000),
)
def test_difference_histogram_matches_brute_force(
    a: list[int], b: list[int], lo: int, bin_ps: int, n_bins: int, offset: int
) -> None:
    from coincidence import difference_histogram

    ta = np.sort(np.array(a, np.int64)) + offset  # large times: the prefix sums wrap
    tb = np.sort(np.array(b, np.int64)) + offset
    d = (tb[None, :] - ta[:, None]).ravel() - lo
    d = d[(d >= 0) & (d < n_bins * bin_ps)]
    counts, sums = difference_histogram(ta, tb, lo, bin_ps, n_bins)
    assert np.array_equal(counts, np.bincount(d // bin_ps, minlength=n_bins))
    want = np.bincount(d // bin_ps, weights=d, minlength=n_bins)
    assert np.array_equal(sums, want)


def test_difference_histogram_of_a_million_equal_timestamps() -> None:
    from coincidence import difference_histogram

    t = np.full(500_000, 10**12, np.int64)
    counts, sums = difference_histogram(t, t, -1_000, 100, 20)
    assert counts[10] == 500_000**2 and counts.sum() == 500_000**2
    assert sums[10] == 1_000 * 500_000**2
