"""The post-processing messages and their binary encoding (version 1).

Every message is ``b"QD" | version (1 byte) | type (1 byte) | fields``, integers
little-endian, arrays as a 4-byte count then the raw items, bit strings packed
(little-endian bit order). Nothing here carries an outcome or key bit except the
parameter-estimation sample, which both sides disclose on purpose and then
remove from the key. ``decode`` refuses anything truncated, oversized, of
another version or with trailing bytes, with a :class:`ProtocolError` naming
the field.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from ._errors import ProtocolError

MAGIC = b"QD"
VERSION = 1
MAX_FRAME_BITS = 1 << 24  # 16 Mibit: larger frames are refused
MAX_ITEMS = MAX_FRAME_BITS


def _packed(bits: np.ndarray) -> bytes:
    return np.packbits(np.asarray(bits, dtype=np.uint8), bitorder="little").tobytes()


@dataclass(frozen=True, eq=False)
class SiftMessage:
    """Analysing side -> peer: the peer's events that paired, and the analysing side's bases.

    One basis per pair (0 = Z, 1 = X), in pairing order. No outcome is carried.
    """

    epoch: int
    peer_indices: np.ndarray  # int64
    bases: np.ndarray  # uint8


@dataclass(frozen=True, eq=False)
class SampleAnnounce:
    """Analysing side -> peer: the estimation sample and the analysing side's bits there.

    The ``n_sample`` positions of ``n_total`` are drawn with ``seed``.
    """

    frame_id: int
    n_total: int
    n_sample: int
    seed: int
    bits: np.ndarray  # uint8, n_sample


@dataclass(frozen=True, eq=False)
class SampleReply:
    """Peer -> analysing side: the peer's bits at the sample positions."""

    frame_id: int
    bits: np.ndarray


@dataclass(frozen=True)
class EcStart:
    """Bob -> Alice: Cascade parameters of a frame; asks for every layer's block parities."""

    frame_id: int
    n: int
    k1: int
    k2: int
    passes: int
    seed: int


@dataclass(frozen=True, eq=False)
class ParityQuery:
    """Bob -> Alice: parities wanted of the nodes ``(layer, half, lo, hi)``."""

    frame_id: int
    seq: int
    layer: np.ndarray  # uint8
    half: np.ndarray  # uint8
    lo: np.ndarray  # uint32
    hi: np.ndarray  # uint32


@dataclass(frozen=True, eq=False)
class ParityReply:
    """Alice -> Bob: the parities asked for (or, after EcStart, the block parities)."""

    frame_id: int
    seq: int
    bits: np.ndarray  # uint8


@dataclass(frozen=True)
class EcDone:
    """Bob -> Alice: Bob's key has no odd block left in any layer."""

    frame_id: int
    seq: int


@dataclass(frozen=True)
class VerifyTag:
    """Alice -> Bob: verification hash key, her tag, her leak count and the PA seed.

    The hash key is drawn after reconciliation ended (Bob's key is then fixed).
    """

    frame_id: int
    hash_key: int
    tag: int
    leak_ec: int
    pa_seed: int


@dataclass(frozen=True)
class VerifyResult:
    """Bob -> Alice: Bob's tag of his corrected key and whether Alice's tag and leak matched."""

    frame_id: int
    tag: int
    ok: bool


Message = (
    SiftMessage
    | SampleAnnounce
    | SampleReply
    | EcStart
    | ParityQuery
    | ParityReply
    | EcDone
    | VerifyTag
    | VerifyResult
)

_TYPES: dict[type, int] = {
    SiftMessage: 1,
    SampleAnnounce: 2,
    SampleReply: 3,
    EcStart: 4,
    ParityQuery: 5,
    ParityReply: 6,
    EcDone: 7,
    VerifyTag: 8,
    VerifyResult: 9,
}
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


def encode(msg: Message) -> bytes:
    """The wire bytes of ``msg``."""
    t = _TYPES.get(type(msg))
    if t is None:
        raise ProtocolError(f"cannot encode {type(msg).__name__}: not a distill message")
    out = [MAGIC, bytes([VERSION, t])]
    if isinstance(msg, SiftMessage):
        idx = np.asarray(msg.peer_indices, dtype="<i8")
        out += [_U64.pack(msg.epoch), _U32.pack(idx.size), idx.tobytes()]
        out += [np.asarray(msg.bases, dtype=np.uint8).tobytes()]
    elif isinstance(msg, SampleAnnounce):
        out += [struct.pack("<QIIQ", msg.frame_id, msg.n_total, msg.n_sample, msg.seed)]
        out += [_packed(msg.bits)]
    elif isinstance(msg, SampleReply | ParityReply):
        seq = msg.seq if isinstance(msg, ParityReply) else 0
        out += [struct.pack("<QII", msg.frame_id, seq, msg.bits.size), _packed(msg.bits)]
    elif isinstance(msg, EcStart):
        out += [struct.pack("<QIIIIQ", msg.frame_id, msg.n, msg.k1, msg.k2, msg.passes, msg.seed)]
    elif isinstance(msg, ParityQuery):
        m = np.asarray(msg.layer).size
        out += [struct.pack("<QII", msg.frame_id, msg.seq, m)]
        out += [np.asarray(msg.layer, dtype=np.uint8).tobytes()]
        out += [np.asarray(msg.half, dtype=np.uint8).tobytes()]
        out += [
            np.asarray(msg.lo, dtype="<u4").tobytes(),
            np.asarray(msg.hi, dtype="<u4").tobytes(),
        ]
    elif isinstance(msg, EcDone):
        out += [struct.pack("<QI", msg.frame_id, msg.seq)]
    elif isinstance(msg, VerifyTag):
        out += [
            struct.pack("<QQQQQ", msg.frame_id, msg.hash_key, msg.tag, msg.leak_ec, msg.pa_seed)
        ]
    else:
        out += [struct.pack("<QQB", msg.frame_id, msg.tag, 1 if msg.ok else 0)]
    return b"".join(out)


class _Reader:
    """Cursor over a message's bytes that names the field a short read fails in."""

    def __init__(self, data: bytes, kind: str) -> None:
        self.data, self.pos, self.kind = data, 0, kind

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError(
                f"{self.kind}: truncated in {field} (needs {n} bytes at offset {self.pos}, "
                f"message has {len(self.data)})"
            )
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt: str, field: str) -> tuple[int, ...]:
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size, field))

    def count(self, field: str, limit: int = MAX_ITEMS) -> int:
        (c,) = self.unpack("I", field)
        if c > limit:
            raise ProtocolError(f"{self.kind}: {field} = {c} exceeds the limit {limit}")
        return c

    def bits(self, n: int, field: str) -> np.ndarray:
        raw = self.take(-(-n // 8), field)
        return np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[:n].copy()

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"{self.kind}: {len(self.data) - self.pos} trailing bytes")


def decode(data: bytes) -> Message:
    """Parse wire bytes into a message; :class:`ProtocolError` on anything malformed."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"message must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 4 or data[:2] != MAGIC:
        raise ProtocolError("not a distill message (bad magic or shorter than the header)")
    if data[2] != VERSION:
        raise ProtocolError(
            f"distill message version {data[2]} is not supported (expected {VERSION})"
        )
    kinds = {v: k for k, v in _TYPES.items()}
    kind = kinds.get(data[3])
    if kind is None:
        raise ProtocolError(f"unknown distill message type {data[3]}")
    r = _Reader(data[4:], kind.__name__)
    msg: Message
    if kind is SiftMessage:
        (epoch,) = r.unpack("Q", "epoch")
        m = r.count("pair count")
        idx = np.frombuffer(r.take(8 * m, "peer_indices"), "<i8").astype(np.int64)
        bases = np.frombuffer(r.take(m, "bases"), np.uint8).copy()
        msg = SiftMessage(epoch, idx, bases)
    elif kind is SampleAnnounce:
        fid, n_total, n_sample, seed = r.unpack("QIIQ", "header")
        if n_total > MAX_FRAME_BITS or n_sample > n_total:
            raise ProtocolError(
                f"SampleAnnounce: n_sample {n_sample} / n_total {n_total} out of range"
            )
        msg = SampleAnnounce(fid, n_total, n_sample, seed, r.bits(n_sample, "bits"))
    elif kind is SampleReply or kind is ParityReply:
        fid, seq = r.unpack("QI", "header")
        m = r.count("bit count")
        bits = r.bits(m, "bits")
        msg = SampleReply(fid, bits) if kind is SampleReply else ParityReply(fid, seq, bits)
    elif kind is EcStart:
        msg = EcStart(*r.unpack("QIIIIQ", "parameters"))
    elif kind is ParityQuery:
        fid, seq = r.unpack("QI", "header")
        m = r.count("node count")
        layer = np.frombuffer(r.take(m, "layer"), np.uint8).copy()
        half = np.frombuffer(r.take(m, "half"), np.uint8).copy()
        lo = np.frombuffer(r.take(4 * m, "lo"), "<u4").astype(np.int64)
        hi = np.frombuffer(r.take(4 * m, "hi"), "<u4").astype(np.int64)
        msg = ParityQuery(fid, seq, layer, half, lo, hi)
    elif kind is EcDone:
        msg = EcDone(*r.unpack("QI", "header"))
    elif kind is VerifyTag:
        msg = VerifyTag(*r.unpack("QQQQQ", "fields"))
    else:
        fid, tag, ok = r.unpack("QQB", "fields")
        if ok > 1:
            raise ProtocolError(f"VerifyResult: ok must be 0 or 1, got {ok}")
        msg = VerifyResult(fid, tag, bool(ok))
    r.end()
    return msg
