"""Binary framing of a time-tag stream (our choice; see the ID1000 driver's docstring for why).

One frame carries one contiguous TagBatch, little-endian::

    magic  4 bytes  b"QTAG"
    n      uint32   number of tags
    begin  int64    begin_ps of the covered interval
    end    int64    end_ps of the covered interval
    n x uint64      timestamps, picoseconds
    n x uint8       channels (0-based: ID1000 input k is channel k-1)

A frame whose magic is ``b"QEND"`` (``n = 0``) ends the stream cleanly;
a connection that closes without it was cut (power cycle, cable).

The timestamp records are the ID1000's documented 64-bit picosecond
timestamps; the header adds what a per-channel stream lacks: which channel,
and how much time was measured even when no tag arrived.
"""

from __future__ import annotations

import struct

import numpy as np

from coincidence import TagBatch

MAGIC = b"QTAG"
END_MAGIC = b"QEND"
HEADER = struct.Struct("<4sIqq")
MAX_TAGS_PER_FRAME = 1 << 26


def encode_frame(batch: TagBatch) -> bytes:
    """One frame holding ``batch``."""
    n = len(batch)
    return b"".join(
        (
            HEADER.pack(MAGIC, n, batch.begin_ps, batch.end_ps),
            batch.timestamps.astype("<u8", copy=False).tobytes(),
            batch.channels.astype(np.uint8, copy=False).tobytes(),
        )
    )


def end_frame(at_ps: int) -> bytes:
    """The frame that ends a stream at ``at_ps``."""
    return HEADER.pack(END_MAGIC, 0, at_ps, at_ps)


def decode_header(header: bytes) -> tuple[int, int, int]:
    """``(n_tags, begin_ps, end_ps)`` of a frame header (n = -1 for the end frame).

    Raises ValueError if the bytes are not a frame header.
    """
    magic, n, begin, end = HEADER.unpack(header)
    if magic == END_MAGIC:
        return -1, begin, end
    if magic != MAGIC:
        raise ValueError(f"bad frame magic {magic!r}")
    if n > MAX_TAGS_PER_FRAME:
        raise ValueError(f"frame claims {n} tags, more than {MAX_TAGS_PER_FRAME}")
    if end < begin:
        raise ValueError(f"frame ends at {end} ps before it begins at {begin} ps")
    return n, begin, end


def decode_body(n: int, begin: int, end: int, body: bytes) -> TagBatch:
    """The TagBatch of a frame body (``9 * n`` bytes); TagBatch validates order and interval."""
    ts = np.frombuffer(body, dtype="<u8", count=n).astype(np.int64)
    ch = np.frombuffer(body, dtype=np.uint8, count=n, offset=8 * n)
    return TagBatch(ts, ch.copy(), begin, end)
