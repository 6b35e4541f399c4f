"""Authentication of the post-processing messages: Wegman-Carter with a key pool, or the channel's.

Wegman-Carter (M. N. Wegman and J. L. Carter, "New hash functions and their use
in authentication and set equality", JCSS 22, 265 (1981)): a tag is
``h_k(m) XOR r`` with ``h`` the GF(2^64) polynomial hash (epsilon-almost-XOR-
universal, epsilon = (L + 1) / 2^64 for L 64-bit words), ``k`` a 64-bit hash
key drawn once from the pool and ``r`` a fresh 64-bit one-time pad per tag.

Two modes:

* ``transcript`` (default): messages travel untagged; each side hashes every
  message it sends or receives, in protocol order and length-prefixed, and the
  frame's two last messages (Alice's verification tag, Bob's verdict) carry a
  tag of the whole transcript. Nothing is delivered unless it verifies, so a
  change anywhere is caught, for 128 secret bits a frame instead of 64 a
  message (Cascade exchanges hundreds). The usual choice in QKD stacks that
  authenticate the post-processing once per block.
* ``per_message``: every message carries its own tag and is refused on arrival
  if it does not verify.

Both sides start from the same pre-shared secret and consume the pool in the
same order (the exchange alternates strictly); the consumed bits are returned
to the pool out of each delivered block.
"""

from __future__ import annotations

from typing import Protocol

from ._bits import gf64_mul, poly_hash64, poly_update
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
    """Seals outgoing and opens incoming message bytes; counts the secret bits it consumed.

    ``begin()`` starts a frame's transcript; ``final=True`` marks a frame's last
    message in each direction (where transcript tags travel).
    """

    @property
    def consumed_bits(self) -> int: ...

    def begin(self) -> None: ...

    def seal(self, payload: bytes, final: bool = False) -> bytes: ...

    def open(self, data: bytes, final: bool = False) -> bytes: ...


class ChannelAuth:
    """No tag here: the classical channel authenticates every message (its own keys)."""

    @property
    def consumed_bits(self) -> int:
        """Always 0: the channel's authentication is accounted by the channel."""
        return 0

    def begin(self) -> None:
        """Nothing to reset."""

    def seal(self, payload: bytes, final: bool = False) -> bytes:
        """The payload unchanged."""
        return payload

    def open(self, data: bytes, final: bool = False) -> bytes:
        """The data unchanged."""
        return bytes(data)


class WegmanCarterAuth:
    """Information-theoretic tags from a :class:`KeyPool` (see the module docstring)."""

    def __init__(self, pool: KeyPool, *, per_message: bool = False) -> None:
        self.pool = pool
        self.per_message = per_message
        self._start = pool.consumed_bits
        self._hash_key = int.from_bytes(pool.take(TAG_BYTES), "little")
        self._h = 0

    @property
    def consumed_bits(self) -> int:
        """Secret bits taken from the pool by this authenticator."""
        return self.pool.consumed_bits - self._start

    def begin(self) -> None:
        """Start a new transcript (a new frame)."""
        self._h = 0

    def _pad(self) -> int:
        return int.from_bytes(self.pool.take(TAG_BYTES), "little")

    def _transcript_tag(self) -> bytes:
        return (gf64_mul(self._h, self._hash_key) ^ self._pad()).to_bytes(TAG_BYTES, "little")

    def seal(self, payload: bytes, final: bool = False) -> bytes:
        """``payload`` (plus its tag per message, or the transcript's tag when ``final``)."""
        if self.per_message:
            tag = poly_hash64(payload, self._hash_key) ^ self._pad()
            return payload + tag.to_bytes(TAG_BYTES, "little")
        self._h = poly_update(self._h, payload, self._hash_key)
        return payload + self._transcript_tag() if final else payload

    def open(self, data: bytes, final: bool = False) -> bytes:
        """The payload if its tag verifies; :class:`AuthenticationError` otherwise."""
        data = bytes(data)
        if not self.per_message and not final:
            self._h = poly_update(self._h, data, self._hash_key)
            return data
        if len(data) < TAG_BYTES:
            raise AuthenticationError(f"message of {len(data)} bytes is shorter than its tag")
        payload, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
        if self.per_message:
            want = (poly_hash64(payload, self._hash_key) ^ self._pad()).to_bytes(8, "little")
        else:
            self._h = poly_update(self._h, payload, self._hash_key)
            want = self._transcript_tag()
        if want != tag:
            raise AuthenticationError(
                "Wegman-Carter tag does not verify: a message of the frame was tampered or foreign"
            )
        return payload


FRAME_AUTH_BYTES = 2 * TAG_BYTES
"""Pool bytes one frame uses in transcript mode: the one-time pads of its two tags."""

MIN_AUTH_SECRET_BYTES = 256
"""Smallest pre-shared secret a link accepts: the first ten frames in flight, and more."""


class _FramePool(KeyPool):
    """One frame's share of a :class:`FrameKeyStream`; what the frame returns goes to the stream."""

    def __init__(self, material: bytes, stream: FrameKeyStream) -> None:
        super().__init__(material)
        self._stream = stream

    def add(self, key: bytes) -> None:
        """Refills go back to the link's stream (in delivery order, the same at both sites)."""
        self._stream.add(key)


class FrameKeyStream:
    """Wegman-Carter key material for frames reconciled at the same time (a link's pipeline).

    A link reconciles several frames at once and the two sites start and finish them
    at different moments, so one pool taken from in the order of use would drift
    apart between them. Here frame ``k`` (counted in the order both sites create
    frames) owns bytes ``[k B, (k + 1) B)`` of one stream, ``B`` =
    :data:`FRAME_AUTH_BYTES`: the pre-shared secret followed by the refills in the
    order frames are delivered, which is the same at both sites because the
    classical channel delivers in order. A frame whose bytes are not there yet gets
    :class:`KeyPoolExhaustedError` (both sites then discard it) and the frames after
    it keep their own offsets, so the sites never fall out of step. The hash key is
    the link's, taken once from the secret's first bytes: with a fresh one-time pad
    per tag it may be reused (Wegman and Carter 1981, sec. 4), so a delivered frame
    refills exactly what it used. Transcript mode only (per-message tags use a
    number of pads not known in advance).
    """

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes | bytearray) or len(secret) < MIN_AUTH_SECRET_BYTES:
            raise DistillInputError(
                f"the pre-shared secret must be at least {MIN_AUTH_SECRET_BYTES} bytes"
            )
        self._hash_key = bytes(secret[:TAG_BYTES])
        self._buf = bytearray(secret[TAG_BYTES:])
        self._base = 0  # stream offset of _buf[0]
        self._next_frame = 0
        self.taken_bits = 0

    def _drop_below(self, offset: int) -> None:
        n = min(len(self._buf), max(0, offset - self._base))
        del self._buf[:n]
        self._base += n

    def take_frame(self) -> WegmanCarterAuth:
        """The next frame's authenticator (transcript mode) from its own bytes of the stream."""
        start = self._next_frame * FRAME_AUTH_BYTES
        self._next_frame += 1
        end = start + FRAME_AUTH_BYTES
        if self._base > start or self._base + len(self._buf) < end:
            self._drop_below(end)
            raise KeyPoolExhaustedError(
                f"authentication key pool: frame {self._next_frame - 1} needs stream bytes "
                f"{start}..{end}, {self.available_bits // 8} bytes are there: blocks did not "
                "refill it fast enough; give both sites a new pre-shared secret"
            )
        material = bytes(self._buf[start - self._base : end - self._base])
        self._drop_below(end)
        self.taken_bits += 8 * FRAME_AUTH_BYTES
        # the frame's authenticator takes the link's hash key first, then its two pads
        return WegmanCarterAuth(_FramePool(self._hash_key + material, self))

    def add(self, key: bytes) -> None:
        """Append fresh secret key (a delivered block's refill) to the stream."""
        self._buf += key
        self._drop_below(self._next_frame * FRAME_AUTH_BYTES)

    @property
    def available_bits(self) -> int:
        """Bits in the stream not yet owned by a frame."""
        return 8 * len(self._buf)

    def __repr__(self) -> str:  # never print key material
        return f"FrameKeyStream(available_bits={self.available_bits}, taken={self.taken_bits})"
