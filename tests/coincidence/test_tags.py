import numpy as np
import pytest

from coincidence import ChannelError, TagBatch, TagBatchError, TagOrderError


def test_defaults_cover_first_to_last_tag():
    b = TagBatch(np.array([5, 7, 7, 20]), np.array([0, 1, 2, 1]))
    assert (b.begin_ps, b.end_ps, b.duration_ps, len(b)) == (5, 21, 16, 4)
    assert b.timestamps.dtype == np.int64 and b.channels.dtype == np.uint8


def test_out_of_order_names_first_bad_index():
    with pytest.raises(TagOrderError, match="index 3") as info:
        TagBatch(np.array([1, 2, 3, 2, 1]), np.zeros(5, int))
    assert info.value.index == 3


@pytest.mark.parametrize("bad", [1, 2, 4095, 4096, 4097, 8193, 9999])
def test_out_of_order_found_at_every_block_edge(bad):
    """The blockwise order check names the same index as a plain scan."""
    ts = np.arange(10_000, dtype=np.int64) * 3
    ts[bad] = ts[bad - 1] - 1
    with pytest.raises(TagOrderError) as info:
        TagBatch(ts, np.zeros(ts.size, np.uint8))
    assert info.value.index == bad == next(i for i in range(1, ts.size) if ts[i] < ts[i - 1])


def test_sorted_helper_orders_stably():
    b = TagBatch.sorted(np.array([30, 10, 20, 10]), np.array([0, 1, 2, 3]))
    assert b.timestamps.tolist() == [10, 10, 20, 30]
    assert b.channels.tolist() == [1, 3, 2, 0]


@pytest.mark.parametrize(
    ("ts", "ch", "exc", "msg"),
    [
        ([1, 2], [0], TagBatchError, "differ in length"),
        ([1, 2], [0, -1], ChannelError, "negative channel -1 at index 1"),
        ([1, 2], [0, 300], ChannelError, "channel 300 at index 1"),
        ([1.5, 2], [0, 1], TagBatchError, "integer picoseconds"),
    ],
)
def test_bad_input_is_named(ts, ch, exc, msg):
    with pytest.raises(exc, match=msg):
        TagBatch(np.array(ts), np.array(ch))


def test_tags_outside_interval_refused():
    with pytest.raises(TagBatchError, match="outside the batch interval"):
        TagBatch(np.array([10, 20]), np.array([0, 0]), begin_ps=0, end_ps=20)


def test_check_channels_names_caller_and_index():
    b = TagBatch(np.array([1, 2, 3]), np.array([0, 4, 1]))
    b.check_channels(5, "counter")
    with pytest.raises(ChannelError, match=r"counter: channel 4 at index 1 .* 4 channels"):
        b.check_channels(4, "counter")


def test_split_and_concatenate_round_trip():
    rng = np.random.default_rng(1)
    ts = np.sort(rng.integers(0, 1000, 200))
    b = TagBatch(ts, rng.integers(0, 4, 200), 0, 1000)
    first, second = b.split(ts[57])
    assert first.end_ps == second.begin_ps == ts[57]
    joined = TagBatch.concatenate([first, second])
    assert np.array_equal(joined.timestamps, b.timestamps)
    assert np.array_equal(joined.channels, b.channels)
    with pytest.raises(TagBatchError, match="contiguous"):
        TagBatch.concatenate([second, first])


def test_empty_batch_counts_time():
    b = TagBatch.empty(100, 350)
    assert len(b) == 0 and b.duration_ps == 250


def test_split_at_gives_contiguous_pieces_that_concatenate_back():
    ts = np.array([0, 5, 10, 10, 20], np.int64)
    b = TagBatch(ts, np.zeros(5, np.uint8), 0, 30)
    parts = b.split_at([20, 10, 10])  # unsorted, with a repeat
    assert [(p.begin_ps, p.end_ps) for p in parts] == [(0, 10), (10, 10), (10, 20), (20, 30)]
    assert [len(p) for p in parts] == [2, 0, 2, 1]
    whole = TagBatch.concatenate(parts)
    assert np.array_equal(whole.timestamps, ts)
    with pytest.raises(TagBatchError, match="outside the batch"):
        b.split_at([40])


def test_check_channels_names_the_channel_at_the_index():
    b = TagBatch(np.array([1, 2, 3]), np.array([0, 5, 7]))
    with pytest.raises(ChannelError, match=r"counter: channel 5 at index 1 is outside"):
        b.check_channels(4, "counter")
