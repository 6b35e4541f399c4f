import numpy as np

from coincidence import TagBatch
from controller.merge import MergedTagSource
from tests.controller._sources import ListSource, random_batches


def _stream(rng, begin, ends, rate=1e-3):
    return random_batches(rng, begin, ends, rate)


def test_merge_is_sorted_contiguous_and_loses_nothing_after_common_start():
    rng = np.random.default_rng(1)
    a = _stream(rng, 0, [1000, 5000, 6000, 20000])
    b = _stream(rng, 300, [300, 2500, 9000, 12000, 30000])  # a zero-length first batch
    src = MergedTagSource([ListSource(a), ListSource(b)], [0, 4], 8)
    got = []
    while True:
        batch = src.read(0.1)
        if batch is None:
            break
        got.append(batch)
    merged = TagBatch.concatenate(got)
    assert merged.begin_ps == 300  # where both had started
    assert merged.end_ps == 20000  # as far as both reported
    assert np.all(np.diff(merged.timestamps) >= 0)
    ta = np.concatenate([x.timestamps for x in a])
    tb = np.concatenate([x.timestamps for x in b])
    expect_a = ta[(ta >= 300) & (ta < 20000)]
    expect_b = tb[(tb >= 300) & (tb < 20000)]
    assert np.array_equal(np.sort(merged.timestamps[merged.channels < 4]), expect_a)
    assert np.array_equal(np.sort(merged.timestamps[merged.channels >= 4]), expect_b)
    src.close()


def test_channel_range_is_checked():
    import pytest

    with pytest.raises(ValueError, match="fit"):
        MergedTagSource([ListSource([]), ListSource([])], [0, 6], 8)


def test_clock_offset_is_removed_before_merging():
    rng = np.random.default_rng(2)
    a = _stream(rng, 0, [1000, 2000, 3000])
    b = _stream(rng, 10_000, [11_000, 12_000, 13_000])  # same interval on a clock 10 ns ahead
    src = MergedTagSource([ListSource(a), ListSource(b)], [0, 4], 8, [0, 10_000])
    got = []
    while (batch := src.read(0.1)) is not None:
        got.append(batch)
    merged = TagBatch.concatenate(got)
    assert (merged.begin_ps, merged.end_ps) == (0, 3000)
    tb = np.concatenate([x.timestamps for x in b]) - 10_000
    assert np.array_equal(np.sort(merged.timestamps[merged.channels >= 4]), tb)
