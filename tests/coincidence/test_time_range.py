"""The edges of the time axis and of the window: refused outside, exact inside."""

from __future__ import annotations

import numpy as np
import pytest

from coincidence import (
    MAX_TIMESTAMP_PS,
    CoincidenceCounter,
    CorrelationHistogram,
    TagBatch,
    TagBatchError,
    accidentals_matrix,
    generate_pairs,
    read_npz,
    window_lags,
    write_npz,
)

TOP = MAX_TIMESTAMP_PS


def test_tags_next_to_the_top_of_the_range_count_the_same_whole_and_split() -> None:
    # the reported case, moved to the top of the representable range: 1 pair either way
    ts = np.array([TOP - 49_900, TOP - 200])
    batch = TagBatch(ts, np.array([0, 1]), TOP - 60_000, TOP + 1)
    delays = [-50_000, 0]
    whole = CoincidenceCounter(2, 1_000, delays)
    whole.process(batch)
    split = CoincidenceCounter(2, 1_000, delays)
    for part in batch.split(TOP - 1_000):
        split.process(part)
    assert whole.result().coincidences[0, 1] == 1
    assert split.result().coincidences[0, 1] == 1
    hist = CorrelationHistogram(0, 1, 100, 1_000, 49_700)
    for part in batch.split(TOP - 1_000):
        hist.process(part)
    assert hist.result().counts.sum() == 1


def test_the_bottom_of_the_range_counts_too() -> None:
    ts = np.array([-TOP, -TOP + 300])
    counter = CoincidenceCounter(2, 1_000, [1_000_000_000, -1_000_000_000])
    counter.process(TagBatch(ts, np.array([1, 0]), -TOP, -TOP + 1_000))
    assert counter.result().coincidences.sum() == 0  # 2 ms apart after the delays
    counter = CoincidenceCounter(2, 1_000)
    counter.process(TagBatch(ts, np.array([1, 0]), -TOP, -TOP + 1_000))
    assert counter.result().coincidences[0, 1] == 1


@pytest.mark.parametrize(
    ("timestamps", "index", "value"),
    [
        (np.array([5, 2**63], np.uint64), 1, 2**63),  # used to wrap to a negative time
        (np.array([0, 1, 2**64 - 1], np.uint64), 2, 2**64 - 1),
        (np.array([0, 2**63 - 1], np.int64), 1, 2**63 - 1),
        (np.array([0, 2**62 + 1], np.uint64), 1, 2**62 + 1),
        (np.array([-(2**62) - 1, 0], np.int64), 0, -(2**62) - 1),
    ],
)
def test_timestamps_outside_the_range_are_refused_naming_value_and_index(
    timestamps: np.ndarray, index: int, value: int
) -> None:
    with pytest.raises(TagBatchError, match=rf"timestamp {value} ps at index {index} is outside"):
        TagBatch(timestamps, np.zeros(timestamps.size, np.uint8))


def test_interval_outside_the_range_is_refused() -> None:
    with pytest.raises(TagBatchError, match=r"end_ps .* outside the representable range"):
        TagBatch.empty(0, TOP + 2)
    with pytest.raises(TagBatchError, match=r"begin_ps .* outside the representable range"):
        TagBatch.empty(-TOP - 1, 0)


def test_the_largest_timestamp_round_trips_through_npz(tmp_path) -> None:
    batch = TagBatch(np.array([0, TOP], np.uint64), np.array([0, 3]))
    assert batch.end_ps == TOP + 1
    path = tmp_path / "top.npz"
    write_npz(path, batch)
    back = read_npz(path)
    assert back.timestamps.tolist() == [0, TOP] and back.end_ps == TOP + 1


@pytest.mark.parametrize(("window", "lags"), [(1, 1), (2, 3), (3, 3), (1000, 1001), (1001, 1001)])
def test_window_lags_counts_integer_lags_of_the_closed_window(window: int, lags: int) -> None:
    assert window_lags(window) == lags
    # brute force: |dt| with 2|dt| <= w
    assert sum(1 for dt in range(-window, window + 1) if 2 * abs(dt) <= window) == lags
    acc = accidentals_matrix(np.array([10, 20]), window, 10**6)
    assert acc[0, 1] == pytest.approx(10 * 20 * lags / 10**6)


@pytest.mark.parametrize("window", [2, 1000])
def test_accidentals_match_uncorrelated_integer_streams(window: int) -> None:
    # dense uniform integer times: the accidentals are N_a N_b (w+1) / T, not N_a N_b w / T
    duration = 10**10 if window == 2 else 10**9
    rate = 4e8 if window == 2 else 4e7
    batch = generate_pairs(
        duration_ps=duration,
        pair_rate_hz=0.0,
        noise_rate_hz=rate,
        n_channels=2,
        pair_channels=[],
        delays_ps=[0, 0],
        seed=3,
    )
    counter = CoincidenceCounter(2, window)
    counter.process(batch)
    rep = counter.result()
    acc = rep.accidentals[0, 1]
    z = (rep.coincidences[0, 1] - acc) / np.sqrt(acc)
    assert abs(z) < 5, z
    if window == 2:  # the old w-based figure is 33 % low: many sigma away
        old = rep.singles[0] * rep.singles[1] * window / duration
        assert (rep.coincidences[0, 1] - old) / np.sqrt(old) > 15
