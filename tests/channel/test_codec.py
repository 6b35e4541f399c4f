"""The Rice coder: exact round trips, a naive reference, corrupt input, and bits vs entropy."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channel import (
    BLOCK_EVENTS,
    CodecError,
    decode_indices,
    decode_times,
    delta_entropy_bits,
    encode_indices,
    encode_times,
    pack_bits,
    rice_decode,
    rice_encode,
    unpack_bits,
)
from channel._codec import ESCAPE_UNARY


def naive_rice(values: list[int], block: int) -> bytes:
    """Reference coder: build the bit string one bit at a time, LSB-first 32-bit words."""
    bits: list[int] = []

    def put(v: int, n: int) -> None:
        bits.extend((v >> i) & 1 for i in range(n))

    for lo in range(0, len(values), block):
        blk = values[lo : lo + block]
        costs = {}
        for k in range(63):
            costs[k] = sum(
                (ESCAPE_UNARY + 64) if (d >> k) >= ESCAPE_UNARY else (d >> k) + 1 + k for d in blk
            )
        mean = sum(blk) / len(blk)
        k0 = 0
        while k0 < 62 and 2 ** (k0 + 1) <= mean:
            k0 += 1
        cands = [k for k in (k0, k0 - 1, k0 + 1) if 0 <= k <= 62]
        k = min(cands, key=lambda c: (costs[c], cands.index(c)))
        put(k, 6)
        for d in blk:
            u = d >> k
            if u >= ESCAPE_UNARY:
                put(2**ESCAPE_UNARY - 1, ESCAPE_UNARY)
                put(d, 64)
            else:
                put(2**u - 1, u + 1)
                put(d & (2**k - 1), k)
    bits += [0] * (-len(bits) % 32)
    words = [sum(b << i for i, b in enumerate(bits[w : w + 32])) for w in range(0, len(bits), 32)]
    return np.array(words, "<u4").tobytes()


values_st = st.lists(
    st.one_of(
        st.integers(0, 300),
        st.integers(0, 2**40),
        st.integers(2**62, 2**63 - 1),
    ),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(values_st, st.sampled_from([1, 3, 64, BLOCK_EVENTS]))
def test_rice_equals_naive_reference_and_round_trips(values, block):
    v = np.array(values, np.int64)
    data = rice_encode(v, block)
    assert data == naive_rice(values, block)
    assert rice_decode(data, len(values), block).tolist() == values


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 10**12), max_size=400),
    st.sampled_from([1, 125, 1000, 4096]),
    st.integers(-(10**15), 10**15),
)
def test_times_round_trip_exact_on_the_grid(offsets, res, begin):
    t = begin + np.sort(np.array(offsets, np.int64))
    end = begin + 10**12 + 1
    data = encode_times(t, begin, end, res)
    out = decode_times(data, t.size, begin, end, res)
    assert out.tolist() == (begin + (t - begin) // res * res).tolist()


@settings(max_examples=100, deadline=None)
@given(st.sets(st.integers(0, 10**9), max_size=300))
def test_indices_round_trip(idx):
    i = np.array(sorted(idx), np.int64)
    assert decode_indices(encode_indices(i), i.size).tolist() == i.tolist()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 2000))
def test_corrupt_input_gives_codec_error_never_a_crash(data, n):
    data = data[: len(data) // 4 * 4]
    try:
        out = rice_decode(data, n)
    except CodecError:
        return
    assert out.size == n and (out >= 0).all()


def test_truncated_and_trailing_data_refused():
    data = encode_times(np.arange(0, 10**6, 997), 0, 10**6, 1)
    n = len(range(0, 10**6, 997))
    with pytest.raises(CodecError, match="ends inside a code word"):
        decode_times(data[:-4], n, 0, 10**6, 1)
    with pytest.raises(CodecError, match="data remains"):
        decode_times(data + b"\1\0\0\0", n, 0, 10**6, 1)
    with pytest.raises(CodecError, match="cannot fit"):
        decode_times(data, 10**9, 0, 10**6, 1)


@pytest.mark.parametrize(
    ("t", "msg"),
    [([5, 3], "decrease at index 1"), ([-1], "outside the epoch"), ([10**6], "outside the epoch")],
)
def test_bad_local_times_named(t, msg):
    with pytest.raises(CodecError, match=msg):
        encode_times(np.array(t), 0, 10**6, 1)


def test_bits_pack_and_padding_checked():
    b = np.array([1, 0, 1, 1, 0, 0, 0, 1, 1], np.uint8)
    assert unpack_bits(pack_bits(b), 9).tolist() == b.tolist()
    with pytest.raises(CodecError, match="padding"):
        unpack_bits(b"\x00\xff", 9)
    with pytest.raises(CodecError, match="0 or 1"):
        pack_bits(np.array([0, 2]))


def geometric_entropy_bits(mean: float) -> float:
    """Entropy of a geometric distribution on 0, 1, 2 ... with this mean."""
    return float((1 + mean) * np.log2(1 + mean) - mean * np.log2(mean))


@pytest.mark.parametrize("rate_hz", [1e4, 1e5, 1e6, 1e7])
@pytest.mark.parametrize("resolution_ps", [1, 125])
def test_bits_per_event_within_one_bit_of_the_entropy(rate_hz, resolution_ps):
    rng = np.random.default_rng(int(rate_hz) + resolution_ps)
    n = 200_000
    t = np.cumsum(rng.exponential(1e12 / rate_hz, n)).astype(np.int64)
    end = int(t[-1]) + 1
    data = encode_times(t, 0, end, resolution_ps)
    bits = len(data) * 8 / n
    d = np.diff(t // resolution_ps, prepend=0)
    h = delta_entropy_bits(d)
    # the estimator agrees with the closed form for geometric differences
    assert h == pytest.approx(geometric_entropy_bits(float(d.mean())), abs=0.05)
    assert h - 0.05 <= bits < h + 1.0  # a prefix code cannot beat the entropy (estimate +-0.05)
