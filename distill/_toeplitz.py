"""Privacy amplification by (modified) Toeplitz hashing, a two-universal family.

``y = x[:m] XOR T x[m:]`` over GF(2), with ``T[i, j] = s[i - j + n - m - 1]``
the ``m x (n - m)`` Toeplitz matrix of ``n - 1`` seed bits: the matrix
``(I_m | T)``, universal_2 as shown by M. Hayashi and T. Tsurumaru, "More
efficient privacy amplification with less random seeds via dual universal hash
function", IEEE Trans. Inf. Theory 62, 2213 (2016); Toeplitz hashing after
H. Krawczyk, "LFSR-based hashing and authentication", CRYPTO '94. ``T x[m:]``
is the slice ``n - m - 1 .. n - 2`` of the integer convolution ``s * x[m:]``,
computed with real FFTs of the next 3-smooth length >= ``n - 1`` (circular
wrap-around only touches the indices below the slice) and reduced mod 2: exact
in float64 since every sum is at most ``n``. The identity part halves the FFT
length compared with a plain ``m x n`` Toeplitz matrix.
"""

from __future__ import annotations

import numpy as np

from ._errors import DistillInputError

MAX_PA_BITS = 1 << 26


def _next_fast(n: int) -> int:
    """Smallest 2^a 3^b >= n (sizes pocketfft handles fastest)."""
    best = 1 << (n - 1).bit_length()
    p3 = 1
    while p3 < best:
        v = p3
        while v < n:
            v *= 2
        best = min(best, v)
        p3 *= 3
    return best


def toeplitz_seed(n: int, m: int, seed: int) -> np.ndarray:
    """The ``n - 1`` seed bits of an ``m x n`` hash, expanded from a 64-bit public seed.

    Philox counter-based generator (Salmon et al., SC '11): the seed is public,
    the expansion only saves channel bandwidth.
    """
    if not 0 < m < n:
        raise DistillInputError(f"need 0 < m < n, got m={m}, n={n}")
    rng = np.random.Generator(np.random.Philox(seed & 0xFFFFFFFFFFFFFFFF))
    nb = n - 1
    return np.unpackbits(np.frombuffer(rng.bytes(-(-nb // 8)), np.uint8))[:nb].copy()


def toeplitz_hash(bits: np.ndarray, seed_bits: np.ndarray, m: int) -> np.ndarray:
    """``m`` output bits ``(I_m | T) x mod 2`` of ``n`` input bits, with ``n - 1`` seed bits."""
    x = np.asarray(bits)
    s = np.asarray(seed_bits)
    n = x.size
    if x.ndim != 1 or n < 2 or n > MAX_PA_BITS:
        raise DistillInputError(f"input must be 1-D with 2..2^26 bits, got shape {x.shape}")
    if x.size and (x.dtype.kind not in "biu" or int(x.max()) > 1 or int(x.min()) < 0):
        raise DistillInputError("input must hold 0/1 bits")
    if not 0 < m < n:
        raise DistillInputError(f"output length must be in 1..{n - 1}, got {m}")
    if s.ndim != 1 or s.size != n - 1:
        raise DistillInputError(f"seed must have n - 1 = {n - 1} bits, got {s.size}")
    r = n - m
    size = _next_fast(n - 1)
    fx = np.fft.rfft(x[m:].astype(np.float64), size)
    fs = np.fft.rfft(s.astype(np.float64), size)
    conv = np.fft.irfft(fx * fs, size)[r - 1 : r - 1 + m]
    return ((np.rint(conv).astype(np.int64) & 1).astype(np.uint8)) ^ x[:m].astype(np.uint8)
