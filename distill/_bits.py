"""Bit-level kernels shared by the room: mixing, parity, packing, GF(2^64) polynomial hashing.

Numba style of the house: private ``@njit(cache=True, nogil=True)`` kernels with
plain array arguments; the public wrappers validate and allocate.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_GF64_POLY = np.uint64(0x1B)  # x^64 + x^4 + x^3 + x + 1 (low terms)
_ONE = np.uint64(1)


@njit(cache=True, nogil=True)
def _mix64(x: np.uint64) -> np.uint64:
    """SplitMix64 finaliser (Steele, Lea, Flood 2014): a fast 64-bit bijective mixer."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def _parity64(x: np.uint64) -> int:
    """Parity (0/1) of the set bits of a 64-bit word."""
    x ^= x >> np.uint64(32)
    x ^= x >> np.uint64(16)
    x ^= x >> np.uint64(8)
    x ^= x >> np.uint64(4)
    x ^= x >> np.uint64(2)
    x ^= x >> np.uint64(1)
    return int(x & _ONE)


@njit(cache=True, nogil=True)
def _popcount64(x: np.uint64) -> int:
    """Number of set bits of a 64-bit word (SWAR)."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return int((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@njit(cache=True, nogil=True)
def _gf64_mul(a: np.uint64, b: np.uint64) -> np.uint64:
    """Product in GF(2^64) = GF(2)[x] / (x^64 + x^4 + x^3 + x + 1), shift-and-add."""
    r = np.uint64(0)
    for i in range(64):
        if (b >> np.uint64(i)) & _ONE:
            r ^= a
        carry = a >> np.uint64(63)
        a = (a << _ONE) ^ (carry * _GF64_POLY)
    return r


@njit(cache=True, nogil=True)
def _poly_hash(words: np.ndarray, key: np.uint64, n_bits: np.uint64) -> np.uint64:
    """Horner evaluation of the message polynomial at ``key``, length appended last."""
    h = np.uint64(0)
    for i in range(words.size):
        h = _gf64_mul(h ^ words[i], key)
    return _gf64_mul(h ^ n_bits, key)


@njit(cache=True, nogil=True)
def _poly_update(h: np.uint64, words: np.ndarray, key: np.uint64) -> np.uint64:
    """Continue a Horner evaluation with more 64-bit words (for hashing a transcript)."""
    for i in range(words.size):
        h = _gf64_mul(h ^ words[i], key)
    return h


def bytes_to_words(data: bytes) -> np.ndarray:
    """Little-endian 64-bit words of ``data``, zero padded to a multiple of 8 bytes."""
    pad = bytes(data) + b"\0" * (-len(data) % 8)
    return np.frombuffer(pad, dtype="<u8").astype(np.uint64)


def gf64_mul(a: int, b: int) -> int:
    """Product in GF(2^64) (the field of :func:`poly_hash64`)."""
    return int(_gf64_mul(np.uint64(a), np.uint64(b)))


def poly_update(h: int, data: bytes, key: int) -> int:
    """Absorb ``len(data)`` (one word) then ``data``'s words into the Horner state ``h``."""
    words = np.concatenate([np.array([len(data)], np.uint64), bytes_to_words(data)])
    return int(_poly_update(np.uint64(h), words, np.uint64(key)))


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """0/1 uint8 bits -> little-endian uint64 words (bit j of word w is ``bits[64 w + j]``)."""
    b = np.asarray(bits, dtype=np.uint8)
    n = b.size
    padded = np.zeros(-(-n // 64) * 64, dtype=np.uint8)
    padded[:n] = b
    return np.packbits(padded, bitorder="little").view("<u8").astype(np.uint64)


def unpack_bits(words: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``n`` bits as 0/1 uint8."""
    by = np.ascontiguousarray(words, dtype="<u8").view(np.uint8)
    return np.unpackbits(by, bitorder="little")[:n].copy()


def poly_hash64(data: bytes | np.ndarray, key: int) -> int:
    """64-bit polynomial hash over GF(2^64) of bytes (or of a 0/1 bit array).

    The message is cut into 64-bit words ``m_1 .. m_L`` (zero padded) and the
    length ``n`` (bits) appended; the hash is
    ``sum_i m_i k^(L+2-i) + n k`` evaluated by Horner's rule. Two different
    messages of at most ``L`` words collide for at most ``(L + 1)`` keys out of
    2^64 (a polynomial of degree ``L + 1`` has at most that many roots): the
    epsilon-almost-universal family of Carter and Wegman, "Universal classes of
    hash functions", JCSS 18, 143 (1979), in its polynomial form (e.g. Bierbrauer
    et al., CRYPTO '93).
    """
    if isinstance(data, np.ndarray):
        bits = np.asarray(data, dtype=np.uint8)
        n_bits = bits.size
        words = pack_bits(bits)
    else:
        raw = bytes(data)
        n_bits = 8 * len(raw)
        pad = raw + b"\0" * (-len(raw) % 8)
        words = np.frombuffer(pad, dtype="<u8").astype(np.uint64)
    return int(_poly_hash(words, np.uint64(key & 0xFFFFFFFFFFFFFFFF), np.uint64(n_bits)))
