"""Compression of an epoch's detection times and of sorted index lists (Rice codes, Numba).

Times. The times of an epoch are quantised to the tagger's resolution ``r``
relative to the epoch's start, ``q_i = floor((t_i - begin_ps) / r)``, and the
differences ``d_i = q_i - q_{i-1}`` (``q_{-1} = 0``) are written with a Rice
code (Golomb code with a power-of-two parameter; R. F. Rice, JPL Publication
79-22, 1979; S. W. Golomb, IEEE Trans. Inf. Theory 12, 399, 1966) whose
parameter ``k`` is chosen per block of :data:`BLOCK_EVENTS` differences as the
one of three candidates around ``log2(mean)`` that gives the fewest bits.
For Poisson arrivals the differences are geometric, for which a Golomb code
is optimal (Gallager and Van Voorhis, IEEE Trans. Inf. Theory 21, 228, 1975)
and the Rice restriction costs at most ~0.03 bit (Kiely, IPN PR 42-159, 2004).

Code word of ``d`` with parameter ``k``: ``u = d >> k`` ones and a zero
(unary), then the ``k`` low bits of ``d``; when ``u >= ESCAPE_UNARY`` the
word is ``ESCAPE_UNARY`` ones and ``d`` in 64 raw bits instead, so a gap of
any length costs at most 96 bits. Each block starts with ``k`` in 6 bits.
Bits are packed least significant first into little-endian 32-bit words.

Indices. Sorted, strictly increasing non-negative indices (which of an
epoch's events paired, sample positions) are coded as ``idx_i - idx_{i-1} - 1``
with the same code.

The decoder checks every read against the end of the input and the declared
count, and demands that the input ends where the last code word ends: a
corrupt or truncated block gives :class:`~channel.CodecError`, never a read
out of bounds.
"""

from __future__ import annotations

import numba
import numpy as np

from ._errors import CodecError

BLOCK_EVENTS = 4096
"""Differences per Rice block (one 6-bit parameter each: 0.0015 bit per event)."""

ESCAPE_UNARY = 32
"""A unary part this long announces a raw 64-bit value instead of a Rice word."""

MAX_RICE_K = 62
"""Largest Rice parameter (the 6-bit field could hold 63; differences are < 2**63)."""

_u64 = np.uint64
_MASK32 = np.uint64(0xFFFFFFFF)

_TRAILING_ONES = np.array([(~b & (b + 1)).bit_length() - 1 for b in range(256)], np.uint8)
"""Number of consecutive one bits from the least significant end of a byte."""

# status codes of the kernels (negative: error)
_OK = 0
_E_TRUNCATED = -1
_E_BAD_K = -2
_E_TRAILING = -3
_E_OVERFLOW = -4


@numba.njit(cache=True, nogil=True, inline="always")
def _put(
    out: np.ndarray, w: int, acc: np.uint64, nb: int, v: np.uint64, n: int
) -> tuple[int, np.uint64, int]:
    """Append the ``n <= 32`` low bits of ``v``; flush a word when 32 bits are pending."""
    acc |= v << _u64(nb)
    nb += n
    if nb >= 32:
        out[w] = np.uint32(acc & _MASK32)
        w += 1
        acc >>= _u64(32)
        nb -= 32
    return w, acc, nb


@numba.njit(cache=True, nogil=True)
def _rice_bits(d: np.ndarray, lo: int, hi: int, k: int) -> int:
    """Bits of the code words of ``d[lo:hi]`` with parameter ``k`` (block header excluded)."""
    total = 0
    kk = _u64(k)
    for i in range(lo, hi):
        u = _u64(d[i]) >> kk
        if u >= ESCAPE_UNARY:
            total += ESCAPE_UNARY + 64
        else:
            total += int(u) + 1 + k
    return total


@numba.njit(cache=True, nogil=True)
def _choose_k(d: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """The Rice parameter with the fewest bits for ``d[lo:hi]`` and that bit count.

    Candidates: ``k0 = floor(log2(mean))`` and its two neighbours (ties to ``k0``,
    then ``k0 - 1``). Without escapes the cost is ``sum(d >> k) + n (k + 1)``,
    summed for the three candidates in one pass.
    """
    s = 0.0
    mx = _u64(0)
    for i in range(lo, hi):
        v = _u64(d[i])
        s += float(v)
        mx = max(mx, v)
    mean = s / (hi - lo)
    k0 = 0
    while k0 < MAX_RICE_K and float(_u64(1) << _u64(k0 + 1)) <= mean:
        k0 += 1
    km = max(k0 - 1, 0)
    kp = min(k0 + 1, MAX_RICE_K)
    n = hi - lo
    if (mx >> _u64(km)) < ESCAPE_UNARY:
        s0 = _u64(0)
        sm = _u64(0)
        sp = _u64(0)
        for i in range(lo, hi):
            v = _u64(d[i])
            s0 += v >> _u64(k0)
            sm += v >> _u64(km)
            sp += v >> _u64(kp)
        c0 = int(s0) + n * (k0 + 1)
        cm = int(sm) + n * (km + 1)
        cp = int(sp) + n * (kp + 1)
    else:
        c0 = _rice_bits(d, lo, hi, k0)
        cm = _rice_bits(d, lo, hi, km)
        cp = _rice_bits(d, lo, hi, kp)
    best_k, best = k0, c0
    if cm < best:
        best_k, best = km, cm
    if cp < best:
        best_k, best = kp, cp
    return best_k, best


@numba.njit(cache=True, nogil=True)
def _rice_encode(d: np.ndarray, block: int, ks: np.ndarray) -> np.ndarray:
    """Rice-code the non-negative ``d`` in blocks of ``block``; returns the 32-bit words."""
    n = d.shape[0]
    nblocks = (n + block - 1) // block
    bits = 0
    for b in range(nblocks):
        lo = b * block
        hi = min(n, lo + block)
        k, nbits = _choose_k(d, lo, hi)
        ks[b] = k
        bits += 6 + nbits
    out = np.empty((bits + 31) // 32 + 1, np.uint32)
    w = 0
    acc = _u64(0)
    nb = 0
    ones = _u64(0xFFFFFFFF)
    for b in range(nblocks):
        lo = b * block
        hi = min(n, lo + block)
        k = int(ks[b])
        kk = _u64(k)
        w, acc, nb = _put(out, w, acc, nb, _u64(k), 6)
        lowmask = (_u64(1) << kk) - _u64(1)
        for i in range(lo, hi):
            v = _u64(d[i])
            u = v >> kk
            if u >= ESCAPE_UNARY:
                w, acc, nb = _put(out, w, acc, nb, ones, 32)
                w, acc, nb = _put(out, w, acc, nb, v & _MASK32, 32)
                w, acc, nb = _put(out, w, acc, nb, v >> _u64(32), 32)
                continue
            # u ones then a zero (u + 1 <= 32 bits), then the k low bits
            r = v & lowmask
            nu = int(u) + 1
            if nu + k <= 32:
                w, acc, nb = _put(
                    out, w, acc, nb, ((_u64(1) << u) - _u64(1)) | (r << u << 1), nu + k
                )
                continue
            w, acc, nb = _put(out, w, acc, nb, (_u64(1) << u) - _u64(1), nu)
            if k <= 32:
                w, acc, nb = _put(out, w, acc, nb, r, k)
            else:
                w, acc, nb = _put(out, w, acc, nb, r & _MASK32, 32)
                w, acc, nb = _put(out, w, acc, nb, r >> _u64(32), k - 32)
    if nb > 0:
        out[w] = np.uint32(acc & _MASK32)
        w += 1
    return out[:w]


@numba.njit(cache=True, nogil=True, inline="always")
def _refill(words: np.ndarray, r: int, acc: np.uint64, nb: int) -> tuple[int, np.uint64, int]:
    """Load one more 32-bit word when at most 32 bits are buffered and input remains."""
    if nb <= 32 and r < words.shape[0]:
        acc |= _u64(words[r]) << _u64(nb)
        nb += 32
        r += 1
    return r, acc, nb


@numba.njit(cache=True, nogil=True)
def _rice_decode(
    words: np.ndarray, n: int, block: int, mode: int, base: int, step: int, out: np.ndarray
) -> int:
    """Decode ``n`` values into ``out``; returns a status code (0 ok, negative error).

    ``mode`` 0: ``out`` gets the differences themselves; 1: times
    ``base + step * cumsum(d)`` (``step`` = resolution); 2: indices
    ``cumsum(d + 1) - 1``. Overflow of the running sum is an error.
    """
    r = 0
    acc = _u64(0)
    nb = 0
    q = 0
    lim = (2**63 - 1 - abs(base)) // max(step, 1)
    k = 0
    kk = _u64(0)
    lowmask = _u64(0)
    left = 0
    for i in range(n):
        if left == 0:
            left = block
            r, acc, nb = _refill(words, r, acc, nb)
            if nb < 6:
                return _E_TRUNCATED
            k = int(acc & _u64(63))
            acc >>= _u64(6)
            nb -= 6
            if k > MAX_RICE_K:
                return _E_BAD_K
            kk = _u64(k)
            lowmask = (_u64(1) << kk) - _u64(1)
        left -= 1
        # unary part: by table when the terminating zero is in the low byte (the usual case)
        if nb <= 32:
            r, acc, nb = _refill(words, r, acc, nb)
        u = int(_TRAILING_ONES[int(acc & _u64(255))])
        if u < 8 and u < nb:
            acc >>= _u64(u + 1)
            nb -= u + 1
        else:
            u = 0
            while True:
                if nb == 0:
                    r, acc, nb = _refill(words, r, acc, nb)
                    if nb == 0:
                        return _E_TRUNCATED
                bit = acc & _u64(1)
                acc >>= _u64(1)
                nb -= 1
                if bit == 0:
                    break
                u += 1
                if u == ESCAPE_UNARY:
                    break
        if u == ESCAPE_UNARY:
            r, acc, nb = _refill(words, r, acc, nb)
            r, acc, nb = _refill(words, r, acc, nb)
            if nb < 64:
                # two words needed; _refill loads at most one when nb > 32
                if nb < 32:
                    return _E_TRUNCATED
                lo32 = acc & _MASK32
                acc >>= _u64(32)
                nb -= 32
                r, acc, nb = _refill(words, r, acc, nb)
                if nb < 32:
                    return _E_TRUNCATED
                hi32 = acc & _MASK32
                acc >>= _u64(32)
                nb -= 32
            else:  # pragma: no cover - nb never exceeds 63
                return _E_TRUNCATED
            v = lo32 | (hi32 << _u64(32))
            if v >= _u64(2**63):
                return _E_OVERFLOW
            d = int(v)
        else:
            if k <= 32:
                if nb < k:
                    r, acc, nb = _refill(words, r, acc, nb)
                    if nb < k:
                        return _E_TRUNCATED
                rem = acc & lowmask
                acc >>= kk
                nb -= k
            else:
                r, acc, nb = _refill(words, r, acc, nb)
                if nb < 32:
                    return _E_TRUNCATED
                rem = acc & _MASK32
                acc >>= _u64(32)
                nb -= 32
                r, acc, nb = _refill(words, r, acc, nb)
                if nb < k - 32:
                    return _E_TRUNCATED
                rem |= (acc & ((_u64(1) << _u64(k - 32)) - _u64(1))) << _u64(32)
                acc >>= _u64(k - 32)
                nb -= k - 32
            top = _u64(u) << kk
            if (top >> kk) != _u64(u) or top >= _u64(2**63):
                return _E_OVERFLOW
            d = int(top | rem)
        if mode == 0:
            out[i] = d
        elif mode == 1:
            if d > lim - q:
                return _E_OVERFLOW
            q += d
            out[i] = base + step * q
        else:
            if d > 2**62 - q:
                return _E_OVERFLOW
            q += d + 1
            out[i] = q - 1
    # all input consumed, only zero padding of the last word left
    if r != words.shape[0] or nb >= 32 or acc != _u64(0):
        return _E_TRAILING
    return _OK


@numba.njit(cache=True, nogil=True)
def _quantised_deltas(
    t: np.ndarray, begin: int, end: int, step: int, inv_step: float, out: np.ndarray
) -> int:
    """``out[i] = q_i - q_{i-1}`` with ``q = floor((t - begin) / step)``; -1 or the bad index.

    Uses a floating reciprocal with an exact integer fix-up (an int64 division
    per event would cost ~20 ns); exact while ``end - begin < 2**52`` ps.
    """
    prev_t = begin
    prev_q = 0
    for i in range(t.shape[0]):
        ti = t[i]
        if ti < prev_t or ti >= end:
            return i
        x = ti - begin
        if step == 1:
            q = x
        else:
            q = int(x * inv_step)
            if q * step > x:
                q -= 1
            elif (q + 1) * step <= x:
                q += 1
        out[i] = q - prev_q
        prev_q = q
        prev_t = ti
    return -1


@numba.njit(cache=True, nogil=True)
def _index_deltas(idx: np.ndarray, out: np.ndarray) -> int:
    """``out[i] = idx_i - idx_{i-1} - 1`` (``idx_{-1} = -1``); -1 or the first bad index."""
    prev = -1
    for i in range(idx.shape[0]):
        v = idx[i]
        if v <= prev:
            return i
        out[i] = v - prev - 1
        prev = v
    return -1


_ERRORS = {
    _E_TRUNCATED: "the compressed block ends inside a code word",
    _E_BAD_K: f"a block's Rice parameter exceeds {MAX_RICE_K}",
    _E_TRAILING: "data remains after the last code word",
    _E_OVERFLOW: "a decoded value overflows 64 bits",
}

MAX_SPAN_PS = 2**52
"""Longest epoch (end - begin) the time coder accepts: ~75 min, where float64 is still exact."""


def _words(data: bytes | np.ndarray) -> np.ndarray:
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint32 or data.ndim != 1:
            raise CodecError(f"compressed words must be 1-D uint32, got {data.dtype}")
        return data
    if len(data) % 4:
        raise CodecError(f"compressed data of {len(data)} bytes is not a whole number of words")
    return np.frombuffer(data, dtype="<u4")


def rice_encode(values: np.ndarray, block: int = BLOCK_EVENTS) -> bytes:
    """Rice-code non-negative int64 ``values`` (the generic coder under the two below)."""
    v = np.ascontiguousarray(values, dtype=np.int64)
    if v.ndim != 1:
        raise CodecError(f"values must be 1-D, got shape {v.shape}")
    if v.size and int(v.min()) < 0:
        raise CodecError(f"values must be >= 0, got {int(v.min())} at index {int(v.argmin())}")
    if block < 1:
        raise CodecError(f"block must be >= 1, got {block}")
    ks = np.empty(max(1, (v.size + block - 1) // block), np.uint8)
    return bytes(_rice_encode(v, block, ks).astype("<u4", copy=False).tobytes())


def _decode(
    data: bytes | np.ndarray, n: int, mode: int, base: int, step: int, block: int, what: str
) -> np.ndarray:
    if n < 0:
        raise CodecError(f"{what}: negative count {n}")
    words = _words(data)
    # every value costs at least one bit; refuse counts the data cannot hold before allocating
    if n > words.size * 32:
        raise CodecError(f"{what}: {n} values cannot fit in {words.size * 4} bytes")
    out = np.empty(n, np.int64)
    status = _rice_decode(words, n, block, mode, base, step, out)
    if status != _OK:
        raise CodecError(f"{what}: {_ERRORS.get(status, f'status {status}')}")
    return out


def rice_decode(data: bytes | np.ndarray, n: int, block: int = BLOCK_EVENTS) -> np.ndarray:
    """Inverse of :func:`rice_encode` for ``n`` values; :class:`CodecError` if corrupt."""
    return _decode(data, n, 0, 0, 1, block, "rice block")


def encode_times(times_ps: np.ndarray, begin_ps: int, end_ps: int, resolution_ps: int) -> bytes:
    """Compress sorted detection times in ``[begin_ps, end_ps)`` at ``resolution_ps``.

    Times are floored to the resolution grid anchored at ``begin_ps``; decoding
    gives ``begin_ps + resolution_ps * q_i`` exactly.
    """
    t = np.ascontiguousarray(times_ps)
    if t.ndim != 1 or t.dtype.kind not in "iu":
        raise CodecError(f"times must be 1-D integer picoseconds, got {t.dtype} {t.shape}")
    t = t.astype(np.int64, copy=False)
    _check_epoch(begin_ps, end_ps, resolution_ps)
    d = np.empty(t.size, np.int64)
    bad = _quantised_deltas(t, begin_ps, end_ps, resolution_ps, 1.0 / resolution_ps, d)
    if bad >= 0:
        if t[bad] < begin_ps or t[bad] >= end_ps:
            raise CodecError(
                f"time {int(t[bad])} ps at index {bad} is outside the epoch "
                f"[{begin_ps}, {end_ps}) ps"
            )
        raise CodecError(f"times decrease at index {bad}: {int(t[bad - 1])} > {int(t[bad])} ps")
    return rice_encode(d)


def decode_times(
    data: bytes | np.ndarray, n: int, begin_ps: int, end_ps: int, resolution_ps: int
) -> np.ndarray:
    """Inverse of :func:`encode_times`: ``n`` times (int64 ps) on the resolution grid."""
    _check_epoch(begin_ps, end_ps, resolution_ps)
    t = _decode(data, n, 1, begin_ps, resolution_ps, BLOCK_EVENTS, "times")
    if n and (t[-1] >= end_ps or t[-1] < begin_ps):
        raise CodecError(f"decoded time {int(t[-1])} ps lies outside [{begin_ps}, {end_ps}) ps")
    return t


def encode_indices(indices: np.ndarray) -> bytes:
    """Compress strictly increasing non-negative indices (paired events, sample positions)."""
    idx = np.ascontiguousarray(indices)
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise CodecError(f"indices must be 1-D integers, got {idx.dtype} {idx.shape}")
    idx = idx.astype(np.int64, copy=False)
    d = np.empty(idx.size, np.int64)
    bad = _index_deltas(idx, d)
    if bad >= 0:
        raise CodecError(
            f"indices must be strictly increasing and >= 0: index {int(idx[bad])} at position {bad}"
        )
    return rice_encode(d)


def decode_indices(data: bytes | np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`encode_indices`."""
    return _decode(data, n, 2, 0, 1, BLOCK_EVENTS, "indices")


def _check_epoch(begin_ps: int, end_ps: int, resolution_ps: int) -> None:
    if not 1 <= resolution_ps < 2**32:
        raise CodecError(f"resolution_ps must be in [1, 2**32), got {resolution_ps}")
    if not end_ps > begin_ps:
        raise CodecError(f"epoch end {end_ps} ps must be after its begin {begin_ps} ps")
    if end_ps - begin_ps > MAX_SPAN_PS:
        raise CodecError(f"epoch spans {end_ps - begin_ps} ps, more than {MAX_SPAN_PS} ps")
    if abs(begin_ps) >= 2**62 or abs(end_ps) >= 2**62:
        raise CodecError(f"epoch [{begin_ps}, {end_ps}) ps is beyond +-2**62 ps")


def pack_bits(bits: np.ndarray) -> bytes:
    """Pack 0/1 values (bases) eight to a byte, first bit in the most significant place."""
    b = np.ascontiguousarray(bits)
    if b.ndim != 1:
        raise CodecError(f"bits must be 1-D, got shape {b.shape}")
    if b.dtype != np.bool_:
        if b.dtype.kind not in "iub":
            raise CodecError(f"bits must be integers 0/1 or bool, got {b.dtype}")
        if b.size and (int(b.min()) < 0 or int(b.max()) > 1):
            bad = int(np.argmax((b < 0) | (b > 1)))
            raise CodecError(f"bits must be 0 or 1: {int(b[bad])} at index {bad}")
    return bytes(np.packbits(b.astype(np.uint8, copy=False)).tobytes())


def unpack_bits(data: bytes, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``n`` uint8 values 0/1; padding bits must be zero."""
    if len(data) != (n + 7) // 8:
        raise CodecError(f"{n} bits need {(n + 7) // 8} bytes, got {len(data)}")
    bits = np.unpackbits(np.frombuffer(data, np.uint8))
    if bits[n:].any():
        raise CodecError("padding bits after the last packed bit are not zero")
    return bits[:n]


def delta_entropy_bits(deltas: np.ndarray, bins_per_octave: int = 16) -> float:
    """Empirical entropy (bits per value) of non-negative integer differences.

    Histogram over log-spaced bins: every integer below ``2 * bins_per_octave``
    is its own bin, above that ``bins_per_octave`` bins per factor of two
    (integer edges). With ``p_b`` the fraction of values in bin ``b`` of
    ``w_b`` integers, ``H = -sum p_b log2(p_b / w_b)``: the entropy of the
    distribution that is uniform inside each bin with the observed bin masses.
    For geometric differences the mass varies by a few percent across a bin,
    so this is within ~0.01 bit of the true entropy; the plug-in bias is
    small because the ~16 bins per octave are well filled.
    """
    d = np.asarray(deltas, dtype=np.int64)
    if d.size == 0:
        return 0.0
    if int(d.min()) < 0:
        raise CodecError("differences must be >= 0")
    top = int(d.max()) + 1
    lin = 2 * bins_per_octave
    edges = list(range(0, min(lin, top) + 1))
    x = float(lin)
    while edges[-1] < top:
        x *= 2.0 ** (1.0 / bins_per_octave)
        e = round(x)
        if e > edges[-1]:
            edges.append(min(e, top) if e >= top else e)
    edges_a = np.asarray(edges, np.int64)
    counts = np.bincount(np.searchsorted(edges_a, d, side="right") - 1, minlength=edges_a.size - 1)
    widths = np.diff(edges_a).astype(np.float64)
    counts = counts[: widths.size]
    p = counts / d.size
    nz = p > 0
    return float(-(p[nz] * np.log2(p[nz] / widths[nz])).sum())
