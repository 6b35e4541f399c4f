"""Numba kernels against naive references (and the interpreted twin of each kernel)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from distill import poly_hash64
from distill._bits import pack_bits, unpack_bits
from distill._cascade_kernels import (
    _feistel_order,
    _is_member,
    _masked_count,
    _masked_kth,
    _masked_parity,
    _xor_range,
)


def gf64_mul_ref(a, b):
    """Carry-less product reduced by x^64 + x^4 + x^3 + x + 1, with Python integers."""
    r = 0
    for i in range(64):
        if (b >> i) & 1:
            r ^= a << i
    for i in range(127, 63, -1):
        if (r >> i) & 1:
            r ^= ((1 << 64) | 0x1B) << (i - 64)
    return r


def poly_hash_ref(data: bytes, key: int) -> int:
    pad = data + b"\0" * (-len(data) % 8)
    h = 0
    for i in range(0, len(pad), 8):
        h = gf64_mul_ref(h ^ int.from_bytes(pad[i : i + 8], "little"), key)
    return gf64_mul_ref(h ^ (8 * len(data)), key)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=70), st.integers(0, 2**64 - 1))
def test_poly_hash_equals_the_reference(data, key):
    assert poly_hash64(data, key) == poly_hash_ref(data, key)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5000), st.integers(0, 2**64 - 1))
def test_feistel_order_is_a_permutation(n, seed):
    order = _feistel_order(n, np.uint64(seed))
    np.testing.assert_array_equal(np.sort(order), np.arange(n))
    with np.errstate(over="ignore"):  # the interpreted twin wraps like the kernel
        np.testing.assert_array_equal(_feistel_order.py_func(n, np.uint64(seed)), order)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 700), st.data())
def test_range_kernels_equal_naive(n, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    bits = rng.integers(0, 2, n).astype(np.uint8)
    lo = data.draw(st.integers(0, n - 1))
    hi = data.draw(st.integers(lo + 1, n))
    layer, half, seed = data.draw(st.integers(2, 20)), data.draw(st.integers(0, 1)), np.uint64(7)
    member = np.array([_is_member(seed, layer, i) for i in range(n)])
    sel = np.flatnonzero(member[lo:hi] == half) + lo
    packed = pack_bits(bits)
    np.testing.assert_array_equal(unpack_bits(packed, n), bits)
    assert _masked_parity(packed, seed, layer, half, lo, hi) == int(bits[sel].sum() % 2)
    assert _masked_count(seed, layer, half, lo, hi) == sel.size
    k = data.draw(st.integers(0, sel.size))
    assert _masked_kth(seed, layer, half, lo, hi, k) == (sel[k] if k < sel.size else -1)
    buf = np.zeros(-(-n // 8) * 8, np.uint8)
    buf[:n] = bits
    assert _xor_range(buf[:n], buf.view(np.uint64), lo, hi) == int(bits[lo:hi].sum() % 2)
