"""Numba kernels of the Cascade reconciliation (both sides), with their pure-Python twins.

Layers (one per Cascade pass):

* layer 0: natural order, blocks of ``k1`` bits;
* layer 1: a keyed pseudo-random permutation (4-round Feistel network, cycle
  walking to ``n``), blocks of ``k2`` bits;
* layers >= 2: two blocks, a pseudo-random half of the frame each (membership
  bit from a keyed hash of the position), kept in natural order.

A *node* is ``(layer, half, lo, hi)``: positions ``lo .. hi-1`` of the layer's
order (for layers >= 2 only the members of ``half`` among them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from ._bits import _mix64, _parity64, _popcount64

_ONE = np.uint64(1)
_LAYER_SALT = np.uint64(0xD1B54A32D192ED03)
_MUL = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, nogil=True)
def _feistel_order(n: int, seed: np.uint64) -> np.ndarray:
    """Keyed permutation of ``range(n)``: ``order[j]`` is the original index at position j.

    4-round balanced Feistel network on the smallest even bit width covering
    ``n`` (Luby-Rackoff), cycle walking back into ``[0, n)`` (Black-Rogaway 2002).
    The round function is a keyed multiply-shift hash (Dietzfelbinger et al. 1997):
    one multiplication a round. The order need not be secret, only independent of
    the errors.
    """
    m = 2
    while (1 << m) < n:
        m += 2
    half = m // 2
    mask = np.uint64((1 << half) - 1)
    shift = np.uint64(64 - half)
    keys = np.empty(4, dtype=np.uint64)
    s = seed
    for r in range(4):
        s = _mix64(s + np.uint64(r + 1))
        keys[r] = s
    out = np.empty(n, dtype=np.int64)
    if (1 << m) == n:  # no cycle walking: a loop the CPU can overlap
        for i in range(n):
            left = np.uint64(i) >> np.uint64(half)
            right = np.uint64(i) & mask
            for r in range(4):
                f = ((right ^ keys[r]) * _MUL) >> shift
                left, right = right, left ^ f
            out[i] = np.int64((left << np.uint64(half)) | right)
        return out
    for i in range(n):
        x = np.uint64(i)
        while True:
            left = x >> np.uint64(half)
            right = x & mask
            for r in range(4):
                f = ((right ^ keys[r]) * _MUL) >> shift
                left, right = right, left ^ f
            x = (left << np.uint64(half)) | right
            if x < np.uint64(n):
                break
        out[i] = np.int64(x)
    return out


@njit(cache=True, nogil=True)
def _member_word(seed: np.uint64, layer: int, w: int) -> np.uint64:
    """Membership bits of positions ``64 w .. 64 w + 63`` in half 1 of a random-halves layer."""
    return _mix64(seed ^ (np.uint64(layer) * _LAYER_SALT) ^ _mix64(np.uint64(w)))


@njit(cache=True, nogil=True)
def _range_word_mask(w: int, lo: int, hi: int) -> np.uint64:
    """Bits of word ``w`` whose positions lie in ``[lo, hi)``."""
    start = w * 64
    a = lo - start if lo > start else 0
    b = hi - start if hi - start < 64 else 64
    if b <= a:
        return np.uint64(0)
    width = b - a
    if width == 64:
        return np.uint64(0xFFFFFFFFFFFFFFFF)
    return ((_ONE << np.uint64(width)) - _ONE) << np.uint64(a)


@njit(cache=True, nogil=True)
def _masked_parity(
    packed: np.ndarray, seed: np.uint64, layer: int, half: int, lo: int, hi: int
) -> int:
    """Parity of the key bits in ``[lo, hi)`` that belong to ``half`` of ``layer``."""
    p = np.uint64(0)
    for w in range(lo // 64, (hi + 63) // 64):
        m = np.uint64(_member_word(seed, layer, w))
        if half == 0:
            m = ~m
        p ^= packed[w] & m & np.uint64(_range_word_mask(w, lo, hi))
    return _parity64(p)


@njit(cache=True, nogil=True)
def _masked_count(seed: np.uint64, layer: int, half: int, lo: int, hi: int) -> int:
    """Number of positions of ``half`` of ``layer`` in ``[lo, hi)``."""
    c = 0
    for w in range(lo // 64, (hi + 63) // 64):
        m = np.uint64(_member_word(seed, layer, w))
        if half == 0:
            m = ~m
        c += _popcount64(m & np.uint64(_range_word_mask(w, lo, hi)))
    return c


@njit(cache=True, nogil=True)
def _masked_kth(seed: np.uint64, layer: int, half: int, lo: int, hi: int, k: int) -> int:
    """Position of the k-th (0-based) member of ``half`` of ``layer`` in [lo, hi); -1 if none."""
    for w in range(lo // 64, (hi + 63) // 64):
        m = np.uint64(_member_word(seed, layer, w))
        if half == 0:
            m = ~m
        m &= np.uint64(_range_word_mask(w, lo, hi))
        c = _popcount64(m)
        if k < c:
            for j in range(64):
                if (m >> np.uint64(j)) & _ONE:
                    if k == 0:
                        return w * 64 + j
                    k -= 1
        k -= c
    return -1


@njit(cache=True, nogil=True)
def _is_member(seed: np.uint64, layer: int, i: int) -> int:
    """1 if position ``i`` is in half 1 of random-halves ``layer``, else 0."""
    return int((np.uint64(_member_word(seed, layer, i // 64)) >> np.uint64(i % 64)) & _ONE)


@njit(cache=True, nogil=True)
def _xor_range(b8: np.ndarray, b64: np.ndarray, lo: int, hi: int) -> int:
    """Parity of the 0/1 bytes ``b8[lo:hi]``.

    ``b64`` is the same buffer seen as uint64, so the aligned middle is XORed
    eight bytes at a time (each byte lane holds 0 or 1).
    """
    p = 0
    j = lo
    while j < hi and (j & 7):
        p ^= b8[j]
        j += 1
    w = np.uint64(0)
    while j + 8 <= hi:
        w ^= b64[j >> 3]
        j += 8
    while j < hi:
        p ^= b8[j]
        j += 1
    return p ^ _parity64(w)


@njit(cache=True, nogil=True)
def _block_parities(b8: np.ndarray, b64: np.ndarray, n: int, k: int, out: np.ndarray) -> None:
    """``out[b]`` = parity of ``bits[b k : (b + 1) k]`` (last block may be short)."""
    for b in range(out.size):
        out[b] = _xor_range(b8, b64, b * k, min(n, (b + 1) * k))


@njit(cache=True, nogil=True)
def _node_parities(
    prefix: np.ndarray,
    packed: np.ndarray,
    seed: np.uint64,
    layer: np.ndarray,
    half: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    out: np.ndarray,
) -> None:
    """Parities of the nodes ``(layer[q], half[q], lo[q], hi[q])`` of Alice's fixed key.

    ``prefix[l, i]`` is the parity of the first ``i`` bits in pass ``l``'s order
    (l = 0, 1), so those nodes cost O(1); random-halves nodes use the packed key.
    """
    for q in range(layer.size):
        lay = layer[q]
        if lay < 2:
            out[q] = prefix[lay, hi[q]] ^ prefix[lay, lo[q]]
        else:
            out[q] = _masked_parity(packed, seed, lay, half[q], lo[q], hi[q])


@njit(cache=True, nogil=True)
def _ceil_log2(m: int) -> int:
    lev = 0
    while (1 << lev) < m:
        lev += 1
    return lev


@njit(cache=True, nogil=True)
def _cache_index(offsets: np.ndarray, lo: int, hi: int) -> int:
    """Slot of the aligned tree node ``[lo, hi)`` in a layer's parity cache."""
    lev = _ceil_log2(hi - lo)
    return int(offsets[lev] + (lo >> lev))


@njit(cache=True, nogil=True)
def _descend(
    layer_arr: np.ndarray,
    lo_arr: np.ndarray,
    hi_arr: np.ndarray,
    apar_arr: np.ndarray,
    reply: np.ndarray,
    bits0: np.ndarray,
    words0: np.ndarray,
    bits1: np.ndarray,
    words1: np.ndarray,
    cache: np.ndarray,
    offsets: np.ndarray,
    status: np.ndarray,
    qmid: np.ndarray,
) -> int:
    """Advance bisections in pass 1 and 2 (``layer`` 0 or 1) as far as known parities allow.

    Each node ``[lo, hi)`` holds an odd number of errors; ``apar`` is Alice's
    parity of it. ``reply[t]`` >= 0 is Alice's parity of the left half just
    received. The node moves into the half with the error, using Alice's cached
    parities (``cache[layer]``) where known (a right half's parity is inferred
    from its parent and the left half, never asked). ``status[t]``: 1 = error at
    ``lo`` (a leaf), 0 = needs Alice's parity of ``[lo, qmid[t])``. Returns the
    number of queries.
    """
    queries = 0
    for t in range(lo_arr.size):
        lay = layer_arr[t]
        lo, hi, ap = lo_arr[t], hi_arr[t], apar_arr[t]
        pending = reply[t]
        while True:
            if hi - lo == 1:
                status[t] = 1
                break
            mid = lo + ((1 << _ceil_log2(hi - lo)) >> 1)
            ci = _cache_index(offsets, lo, mid)
            if pending >= 0:
                cache[lay, ci] = pending
                apl = pending
                pending = -1
            else:
                apl = cache[lay, ci]
            if apl < 0:
                status[t] = 0
                qmid[t] = mid
                queries += 1
                break
            if lay == 0:
                bpl = _xor_range(bits0, words0, lo, mid)
            else:
                bpl = _xor_range(bits1, words1, lo, mid)
            if bpl != apl:
                hi = mid
                ap = apl
            else:
                ap = ap ^ apl
                cache[lay, _cache_index(offsets, mid, hi)] = ap
                lo = mid
        lo_arr[t], hi_arr[t], apar_arr[t] = lo, hi, ap
    return queries


@njit(cache=True, nogil=True)
def _flip(
    positions: np.ndarray,
    key: np.ndarray,
    ordered1: np.ndarray,
    inverse1: np.ndarray,
    packed: np.ndarray,
    mism0: np.ndarray,
    k1: int,
    mism1: np.ndarray,
    k2: int,
) -> None:
    """Flip Bob's bits at original ``positions``; update the mismatches of pass 1 and 2.

    Those of the random-halves passes are recomputed from ``packed`` when needed.
    """
    for t in range(positions.size):
        i = positions[t]
        key[i] ^= 1
        j = inverse1[i]
        ordered1[j] ^= 1
        packed[i // 64] ^= _ONE << np.uint64(i % 64)
        mism0[i // k1] ^= 1
        mism1[j // k2] ^= 1


@njit(cache=True, nogil=True)
def _settle(
    layer: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    apar: np.ndarray,
    qmid: np.ndarray,
    status: np.ndarray,
    order1: np.ndarray,
    found: np.ndarray,
) -> tuple[int, int]:
    """Collect the errors ``_descend`` found and compact the nodes still waiting.

    Found errors go to ``found`` as original positions; the nodes waiting for a
    parity move to the front. Returns the (kept, found) counts.
    """
    k = 0
    f = 0
    for t in range(status.size):
        if status[t] == 1:
            found[f] = order1[lo[t]] if layer[t] == 1 else lo[t]
            f += 1
        else:
            layer[k], lo[k], hi[k], apar[k], qmid[k] = layer[t], lo[t], hi[t], apar[t], qmid[t]
            k += 1
    return k, f


@njit(cache=True, nogil=True)
def _check_nodes(
    layer: np.ndarray, half: np.ndarray, lo: np.ndarray, hi: np.ndarray, passes: int, n: int
) -> int:
    """Index of the first node outside the frame's passes, halves or bits; -1 if none."""
    for q in range(layer.size):
        lay, h = layer[q], half[q]
        if lay >= passes or h > 1 or (lay < 2 and h != 0):
            return q
        if lo[q] < 0 or hi[q] > n or lo[q] >= hi[q]:
            return q
    return -1


# ---------------------------------------------------------------- backends

KERNELS = (
    "_feistel_order",
    "_masked_parity",
    "_masked_count",
    "_masked_kth",
    "_block_parities",
    "_node_parities",
    "_descend",
    "_flip",
    "_settle",
    "_check_nodes",
)


def _wrapping(fn: Any) -> Any:
    """``fn`` with numpy's overflow warnings off: uint64 arithmetic wraps, as in the kernels."""

    def call(*args: Any) -> Any:
        with np.errstate(over="ignore"):
            return fn(*args)

    return call


class Backend:
    """The kernels of one implementation: ``"numba"`` (compiled) or ``"python"``.

    ``"python"`` runs the same algorithm interpreted (each kernel's ``py_func``;
    the small helpers they call stay compiled): the benchmark's baseline.
    """

    def __init__(self, name: str) -> None:
        if name not in ("numba", "python"):
            raise ValueError(f"backend must be 'numba' or 'python', got {name!r}")
        self.name = name
        g = globals()
        for k in KERNELS:
            fn = g[k]
            setattr(self, k.lstrip("_"), fn if name == "numba" else _wrapping(fn.py_func))

    feistel_order: Any
    masked_parity: Any
    masked_count: Any
    masked_kth: Any
    block_parities: Any
    node_parities: Any
    descend: Any
    flip: Any
    settle: Any
    check_nodes: Any
