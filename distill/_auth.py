"""Authentication of the post-processing messages: Wegman-Carter with a key pool, or the channel's.

Wegman-Carter (M. N. Wegman and J. L. Carter, "New hash functions and their use
in authentication and set equality", JCSS 22, 265 (1981)): the tag of message i
is ``h_k(m_i) XOR r_i`` with ``h`` the GF(2^64) polynomial hash (an
epsilon-almost-XOR-universal family, epsilon = (L + 1) / 2^64 for L 64-bit
words), ``k`` a 64-bit hash key drawn once from the pool and ``r_i`` a fresh
64-bit one-time pad per message. Both sides start from the same pre-shared
secret and consume the pool in the same order (the post-processing exchange
alternates strictly, so message i is the i-th sealed or opened at both ends);
the consumed bits are returned to the pool out of each delivered block.
"""

from __future__ import annotations

from typing import Protocol

from ._bits import poly_hash64
from ._errors import AuthenticationError, DistillInputError, KeyPoolExhaustedError

TAG_BYTES = 8


class KeyPool:
    """Secret bits shared by both sites for authentication: a pre-shared secret, then refills."""

    def __init__(self, initial: bytes) -> None:
        if not isinstance(initial, bytes | bytearray) or len(initial) < 2 * TAG_BYTES:
            raise DistillInputError("the pre-shared secret must be bytes, at least 16 of them")
        self._buf = bytearray(initial)
        self.consumed_bits = 0

    def take(self, n_bytes: int) -> bytes:
        """The next ``n_bytes`` of the pool (never reused)."""
        if n_bytes > len(self._buf):
            raise KeyPoolExhaustedError(
                f"authentication key pool has {len(self._buf)} bytes, {n_bytes} needed: "
                "refill it with a pre-shared secret"
            )
        out = bytes(self._buf[:n_bytes])
        del self._buf[:n_bytes]
        self.consumed_bits += 8 * n_bytes
        return out

    def add(self, key: bytes) -> None:
        """Append fresh secret key (from a distilled block) to the pool."""
        self._buf += key

    @property
    def available_bits(self) -> int:
        """Bits left in the pool."""
        return 8 * len(self._buf)

    def __repr__(self) -> str:  # never print key material
        return f"KeyPool(available_bits={self.available_bits}, consumed_bits={self.consumed_bits})"


class Authenticator(Protocol):
    """Seals outgoing and opens incoming message bytes; counts the secret bits it consumed."""

    consumed_bits: int

    def seal(self, payload: bytes) -> bytes: ...

    def open(self, data: bytes) -> bytes: ...


class ChannelAuth:
    """No tag here: the classical channel authenticates every message (its own keys)."""

    consumed_bits = 0

    def seal(self, payload: bytes) -> bytes:
        """The payload unchanged."""
        return payload

    def open(self, data: bytes) -> bytes:
        """The data unchanged."""
        return bytes(data)


class WegmanCarterAuth:
    """Information-theoretic tags from a :class:`KeyPool` (see the module docstring)."""

    def __init__(self, pool: KeyPool) -> None:
        self.pool = pool
        self._start = pool.consumed_bits
        self._hash_key = int.from_bytes(pool.take(TAG_BYTES), "little")

    @property
    def consumed_bits(self) -> int:
        """Secret bits taken from the pool by this authenticator."""
        return self.pool.consumed_bits - self._start

    def _tag(self, payload: bytes) -> bytes:
        pad = int.from_bytes(self.pool.take(TAG_BYTES), "little")
        return (poly_hash64(payload, self._hash_key) ^ pad).to_bytes(TAG_BYTES, "little")

    def seal(self, payload: bytes) -> bytes:
        """``payload | tag``."""
        return payload + self._tag(payload)

    def open(self, data: bytes) -> bytes:
        """The payload if its tag verifies; :class:`AuthenticationError` otherwise."""
        if len(data) < TAG_BYTES:
            raise AuthenticationError(f"message of {len(data)} bytes is shorter than its tag")
        payload, tag = bytes(data[:-TAG_BYTES]), bytes(data[-TAG_BYTES:])
        if self._tag(payload) != tag:
            raise AuthenticationError(
                "Wegman-Carter tag does not verify: message tampered or foreign"
            )
        return payload
