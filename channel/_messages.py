"""What crosses the channel: typed messages and their versioned frames (no I/O).

Frame layout (little-endian), :data:`HEADER_BYTES` = 30 bytes then the payload::

    magic   2s   b"QC"
    version u8   PROTOCOL_VERSION
    type    u8   MessageType
    flags   u16  0 (reserved; anything else is refused)
    link    u32  the link's id (both ends configure it; another link's message is foreign)
    seq     u64  message number of numbered types, 1, 2, 3 ... per direction; 0 for control
    epoch   i64  the epoch (or block) the message belongs to; 0 for control
    length  u32  payload bytes that follow (exactly)

Numbered types (epoch times, epoch replies, typed payloads) are delivered once
and in order by :class:`~channel.ChannelSession`; control types (hello,
acknowledgement) are idempotent and not numbered.

Secrets: :class:`TimeBasisEpoch` holds times and one basis bit per event and
nothing else, so a detector outcome cannot be handed to the channel by
mistake; the analysing side's :class:`PairReply` holds positions and its own
bases. Outcomes cross only when the protocol discloses them on purpose
(sample bits for the error estimate, in a :class:`TypedPayload`).
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ._codec import (
    decode_indices,
    decode_times,
    encode_indices,
    encode_times,
    pack_bits,
    unpack_bits,
)
from ._errors import (
    ChannelError,
    CodecError,
    ForeignMessageError,
    MalformedPayloadError,
    OversizedFrameError,
    TruncatedFrameError,
    UnknownTypeError,
    VersionError,
)

MAGIC = b"QC"
PROTOCOL_VERSION = 1
_HEADER = struct.Struct("<2sBBHIQqI")
HEADER_BYTES = _HEADER.size

MAX_FRAME_BYTES = 64 * 2**20
"""Default largest frame (header + payload): 64 MiB, an epoch of ~30 M events at 17 bits."""

MAX_EVENTS = 2**25
"""Largest number of events (or pairs, or array items) in one message: ~33 M."""

MAX_FIELDS = 64
"""Largest number of fields in one typed payload."""

_NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")


class MessageType(enum.IntEnum):
    """The message types of protocol version 1."""

    HELLO = 1
    """Control: sent on every (re)connect; carries the next message number the sender expects."""
    ACK = 2
    """Control: every numbered message up to ``upto`` was delivered."""
    EPOCH_TIMES = 16
    """Numbered: one epoch's compressed detection times and basis bits (to the analysing side)."""
    PAIR_REPLY = 17
    """Numbered: which events of an epoch paired, and the analysing side's bases for them."""
    TYPED = 32
    """Numbered: a generic typed payload (parities, hashes, syndromes, samples ...)."""


NUMBERED = frozenset({MessageType.EPOCH_TIMES, MessageType.PAIR_REPLY, MessageType.TYPED})
EPOCH_ORDERED = frozenset({MessageType.EPOCH_TIMES, MessageType.PAIR_REPLY})
"""Types whose epoch number must grow strictly from one delivered message to the next."""


def _bits(values: np.ndarray, what: str) -> np.ndarray:
    b = np.ascontiguousarray(values)
    if b.ndim != 1 or b.dtype.kind not in "iub":
        raise ChannelError(f"{what} must be a 1-D array of 0/1, got {b.dtype} {b.shape}")
    if b.size and (int(b.min()) < 0 or int(b.max()) > 1):
        bad = int(np.argmax((b < 0) | (b > 1)))
        raise ChannelError(f"{what} must be 0 or 1: {int(b[bad])} at index {bad}")
    return b.astype(np.uint8, copy=False)


@dataclass(frozen=True)
class Hello:
    """Control: ``next_seq`` is the next message number this side expects from the peer.

    ``session`` is the sender's random session id: a new one means the peer
    restarted, so both numberings start again (epochs stay deduplicated).
    """

    next_seq: int
    session: int = 0


@dataclass(frozen=True)
class Ack:
    """Control: the peer's numbered messages up to and including ``upto`` were delivered."""

    upto: int


@dataclass(frozen=True, eq=False)
class TimeBasisEpoch:
    """One epoch of the sending side: detection times and one basis bit each, nothing else.

    Attributes:
        epoch: epoch number (strictly increasing on a link).
        begin_ps, end_ps: the interval the epoch covers, picoseconds (end exclusive).
        resolution_ps: the grid times are floored to (the tagger's resolution).
        times_ps: int64 ps, sorted, inside the interval; on the grid once decoded.
        bases: uint8 0/1 per event (0 = rectilinear H/V, 1 = diagonal D/A by convention).
    """

    epoch: int
    begin_ps: int
    end_ps: int
    resolution_ps: int
    times_ps: np.ndarray
    bases: np.ndarray

    def __post_init__(self) -> None:
        t = np.ascontiguousarray(self.times_ps)
        if t.ndim != 1 or t.dtype.kind not in "iu":
            raise ChannelError(f"times_ps must be 1-D integers, got {t.dtype} {t.shape}")
        b = _bits(self.bases, "bases")
        if b.size != t.size:
            raise ChannelError(f"{t.size} times but {b.size} bases")
        if t.size > MAX_EVENTS:
            raise ChannelError(f"{t.size} events exceed the limit of {MAX_EVENTS} per epoch")
        object.__setattr__(self, "times_ps", t.astype(np.int64, copy=False))
        object.__setattr__(self, "bases", b)


@dataclass(frozen=True, eq=False)
class PairReply:
    """The analysing side's answer for one epoch: which events paired and its bases for them.

    Attributes:
        epoch: the epoch answered.
        n_events: how many events the answered epoch had (a check on both sides' view).
        indices: strictly increasing positions into that epoch's events.
        bases: the analysing side's basis bit for each paired event.
    """

    epoch: int
    n_events: int
    indices: np.ndarray
    bases: np.ndarray

    def __post_init__(self) -> None:
        idx = np.ascontiguousarray(self.indices)
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise ChannelError(f"indices must be 1-D integers, got {idx.dtype} {idx.shape}")
        b = _bits(self.bases, "bases")
        if b.size != idx.size:
            raise ChannelError(f"{idx.size} indices but {b.size} bases")
        if not 0 <= self.n_events <= MAX_EVENTS:
            raise ChannelError(f"n_events {self.n_events} outside [0, {MAX_EVENTS}]")
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (int(idx[-1]) >= self.n_events or int(idx[0]) < 0):
            raise ChannelError(f"indices must lie in [0, {self.n_events})")
        object.__setattr__(self, "indices", idx)
        object.__setattr__(self, "bases", b)


@dataclass(frozen=True, eq=False)
class Positions:
    """Strictly increasing non-negative positions, sent Rice-coded in a typed payload."""

    values: np.ndarray


FieldValue = np.ndarray | bytes | Positions
"""A typed payload's field: a 1-D numeric array, raw bytes (e.g. a hash), or positions."""

_DTYPE_CODES: dict[str, int] = {
    "|u1": 1,
    "|i1": 2,
    "<u2": 3,
    "<i2": 4,
    "<u4": 5,
    "<i4": 6,
    "<u8": 7,
    "<i8": 8,
    "<f8": 9,
    "|b1": 10,
}
_CODE_DTYPES = {v: np.dtype(k) for k, v in _DTYPE_CODES.items()}
_BYTES_CODE = 20
_POSITIONS_CODE = 21


@dataclass(frozen=True, eq=False)
class TypedPayload:
    """A generic numbered message for the protocols on top (distillation).

    ``kind`` names what it is (e.g. ``"parities"``, ``"hash"``, ``"syndrome"``,
    ``"sample-positions"``, ``"sample-bits"``), ``epoch`` the epoch or key block
    it belongs to, ``fields`` named 1-D arrays, bytes or :class:`Positions`.
    Names: lower case, digits, ``_ . -``, at most 32 characters.
    """

    kind: str
    epoch: int
    fields: Mapping[str, FieldValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.kind):
            raise ChannelError(f"kind {self.kind!r} must match {_NAME_RE.pattern}")
        if len(self.fields) > MAX_FIELDS:
            raise ChannelError(f"{len(self.fields)} fields exceed the limit of {MAX_FIELDS}")
        clean: dict[str, FieldValue] = {}
        for name, value in self.fields.items():
            if not _NAME_RE.match(name):
                raise ChannelError(f"field name {name!r} must match {_NAME_RE.pattern}")
            if isinstance(value, (bytes, bytearray)):
                clean[name] = bytes(value)
            elif isinstance(value, Positions):
                idx = np.ascontiguousarray(value.values)
                if idx.ndim != 1 or idx.dtype.kind not in "iu":
                    raise ChannelError(f"field {name!r}: positions must be 1-D integers")
                clean[name] = Positions(idx.astype(np.int64, copy=False))
            elif isinstance(value, np.ndarray):
                arr = np.ascontiguousarray(value)
                if arr.ndim != 1:
                    raise ChannelError(f"field {name!r} must be 1-D, got shape {arr.shape}")
                code = _DTYPE_CODES.get(arr.dtype.newbyteorder("<").str)
                if code is None:
                    raise ChannelError(f"field {name!r}: dtype {arr.dtype} is not supported")
                clean[name] = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
            else:
                raise ChannelError(
                    f"field {name!r}: expected ndarray, bytes or Positions, got "
                    f"{type(value).__name__}"
                )
        object.__setattr__(self, "fields", clean)


Message = Hello | Ack | TimeBasisEpoch | PairReply | TypedPayload


@dataclass(frozen=True)
class Frame:
    """A decoded frame: its header fields and the message it carries."""

    type: MessageType
    link_id: int
    seq: int
    epoch: int
    message: Message


def message_type(message: Message) -> MessageType:
    """The wire type of a message object."""
    if isinstance(message, Hello):
        return MessageType.HELLO
    if isinstance(message, Ack):
        return MessageType.ACK
    if isinstance(message, TimeBasisEpoch):
        return MessageType.EPOCH_TIMES
    if isinstance(message, PairReply):
        return MessageType.PAIR_REPLY
    if isinstance(message, TypedPayload):
        return MessageType.TYPED
    raise ChannelError(f"not a channel message: {type(message).__name__}")


def message_epoch(message: Message) -> int:
    """The epoch a message carries in its header (0 for control messages)."""
    if isinstance(message, (TimeBasisEpoch, PairReply, TypedPayload)):
        return message.epoch
    return 0


# -- payload codecs ---------------------------------------------------------------------

_U64 = struct.Struct("<Q")
_EPOCH = struct.Struct("<qqIII")  # begin, end, resolution, n_events, n_bytes of times
_REPLY = struct.Struct("<III")  # n_events, n_pairs, n_bytes of indices
_FIELD = struct.Struct("<BI")  # dtype code, count (items, or bytes for raw bytes)


def _payload(message: Message) -> bytes:
    if isinstance(message, Hello):
        return _U64.pack(message.next_seq) + _U64.pack(message.session)
    if isinstance(message, Ack):
        return _U64.pack(message.upto)
    if isinstance(message, TimeBasisEpoch):
        times = encode_times(
            message.times_ps, message.begin_ps, message.end_ps, message.resolution_ps
        )
        head = _EPOCH.pack(
            message.begin_ps,
            message.end_ps,
            message.resolution_ps,
            message.times_ps.size,
            len(times),
        )
        return head + times + pack_bits(message.bases)
    if isinstance(message, PairReply):
        idx = encode_indices(message.indices)
        head = _REPLY.pack(message.n_events, message.indices.size, len(idx))
        return head + idx + pack_bits(message.bases)
    if isinstance(message, TypedPayload):
        kind = message.kind.encode()
        parts = [bytes([len(kind)]), kind, bytes([len(message.fields)])]
        for name, value in message.fields.items():
            nb = name.encode()
            parts += [bytes([len(nb)]), nb]
            if isinstance(value, bytes):
                parts += [_FIELD.pack(_BYTES_CODE, len(value)), value]
            elif isinstance(value, Positions):
                data = encode_indices(value.values)
                parts += [_FIELD.pack(_POSITIONS_CODE, value.values.size), _U64.pack(len(data))]
                parts.append(data)
            else:
                code = _DTYPE_CODES[value.dtype.str]
                parts += [_FIELD.pack(code, value.size), value.tobytes()]
        return b"".join(parts)
    raise ChannelError(f"not a channel message: {type(message).__name__}")


def encode_frame(
    message: Message, link_id: int, seq: int, max_frame_bytes: int = MAX_FRAME_BYTES
) -> bytes:
    """The frame of ``message`` (header + payload); refuses a frame above the size limit."""
    payload = _payload(message)
    if HEADER_BYTES + len(payload) > max_frame_bytes:
        raise OversizedFrameError(
            f"a {message_type(message).name} frame of {HEADER_BYTES + len(payload)} bytes "
            f"exceeds the limit of {max_frame_bytes} bytes"
        )
    epoch = message_epoch(message)
    if not -(2**63) <= epoch < 2**63:
        raise ChannelError(f"epoch {epoch} does not fit in 64 bits")
    if not 0 <= seq < 2**64 or not 0 <= link_id < 2**32:
        raise ChannelError(f"message number {seq} or link id {link_id} out of range")
    head = _HEADER.pack(
        MAGIC, PROTOCOL_VERSION, message_type(message), 0, link_id, seq, epoch, len(payload)
    )
    return head + payload


class _Reader:
    """Bounds-checked reads from a payload; every shortfall is a MalformedPayloadError."""

    def __init__(self, data: memoryview, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int, field_name: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise MalformedPayloadError(
                f"{self.what}: field {field_name} needs {n} bytes at offset {self.pos}, "
                f"{len(self.data) - self.pos} left"
            )
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def unpack(self, st: struct.Struct, field_name: str) -> tuple[int, ...]:
        return tuple(st.unpack(self.take(st.size, field_name)))

    def end(self) -> None:
        if self.pos != len(self.data):
            raise MalformedPayloadError(
                f"{self.what}: {len(self.data) - self.pos} unexpected bytes after offset {self.pos}"
            )


def _count(n: int, what: str) -> int:
    if n > MAX_EVENTS:
        raise OversizedFrameError(f"{what}: count {n} exceeds the limit of {MAX_EVENTS}")
    return n


def _decode_payload(mtype: MessageType, epoch: int, payload: memoryview) -> Message:
    r = _Reader(payload, mtype.name)
    msg: Message
    if mtype == MessageType.HELLO:
        (value,) = r.unpack(_U64, "next_seq")
        (session,) = r.unpack(_U64, "session")
        msg = Hello(value, session)
    elif mtype == MessageType.ACK:
        (value,) = r.unpack(_U64, "upto")
        msg = Ack(value)
    elif mtype == MessageType.EPOCH_TIMES:
        begin, end, res, n, nbytes = r.unpack(_EPOCH, "epoch header")
        _count(n, "EPOCH_TIMES events")
        times = decode_times(r.take(nbytes, "times"), n, begin, end, res)
        bases = unpack_bits(r.take((n + 7) // 8, "bases"), n)
        msg = TimeBasisEpoch(epoch, begin, end, res, times, bases)
    elif mtype == MessageType.PAIR_REPLY:
        n_events, n_pairs, nbytes = r.unpack(_REPLY, "reply header")
        _count(n_events, "PAIR_REPLY events")
        _count(n_pairs, "PAIR_REPLY pairs")
        idx = decode_indices(r.take(nbytes, "indices"), n_pairs)
        bases = unpack_bits(r.take((n_pairs + 7) // 8, "bases"), n_pairs)
        msg = PairReply(epoch, n_events, idx, bases)
    else:
        (klen,) = r.take(1, "kind length")
        kind = r.take(klen, "kind").decode("ascii")
        (nfields,) = r.take(1, "field count")
        fields: dict[str, FieldValue] = {}
        for _ in range(nfields):
            (nlen,) = r.take(1, "field name length")
            name = r.take(nlen, "field name").decode("ascii")
            if name in fields:
                raise MalformedPayloadError(f"TYPED: field {name!r} appears twice")
            code, count = r.unpack(_FIELD, f"field {name!r} header")
            if code == _BYTES_CODE:
                fields[name] = r.take(count, f"field {name!r}")
            elif code == _POSITIONS_CODE:
                _count(count, f"field {name!r}")
                (nbytes,) = r.unpack(_U64, f"field {name!r} length")
                fields[name] = Positions(decode_indices(r.take(nbytes, f"field {name!r}"), count))
            elif code in _CODE_DTYPES:
                dt = _CODE_DTYPES[code]
                _count(count, f"field {name!r}")
                raw = r.take(count * dt.itemsize, f"field {name!r}")
                fields[name] = np.frombuffer(raw, dtype=dt).copy()
            else:
                raise MalformedPayloadError(f"TYPED: field {name!r} has unknown type code {code}")
        msg = TypedPayload(kind, epoch, fields)
    r.end()
    return msg


def decode_frame(
    data: bytes | memoryview, link_id: int, max_frame_bytes: int = MAX_FRAME_BYTES
) -> Frame:
    """Parse and check one frame from the peer.

    Raises a :class:`~channel.ProtocolError` subclass naming what was wrong and
    where: :class:`TruncatedFrameError`, :class:`OversizedFrameError`,
    :class:`VersionError`, :class:`UnknownTypeError`, :class:`ForeignMessageError`
    or :class:`MalformedPayloadError`. Size, version, type and link are checked
    before any payload byte is parsed.
    """
    view = memoryview(data)
    if len(view) > max_frame_bytes:
        raise OversizedFrameError(
            f"frame of {len(view)} bytes exceeds the limit of {max_frame_bytes} bytes"
        )
    if len(view) < HEADER_BYTES:
        raise TruncatedFrameError(
            f"frame of {len(view)} bytes is shorter than the {HEADER_BYTES}-byte header"
        )
    magic, version, mtype, flags, link, seq, epoch, length = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise VersionError(f"bad magic {magic!r} at offset 0 (expected {MAGIC!r})")
    if version != PROTOCOL_VERSION:
        raise VersionError(
            f"protocol version {version} at offset 2 is not supported (this side speaks "
            f"{PROTOCOL_VERSION})"
        )
    if HEADER_BYTES + length > max_frame_bytes:
        raise OversizedFrameError(
            f"declared payload of {length} bytes exceeds the limit of {max_frame_bytes} bytes"
        )
    if len(view) < HEADER_BYTES + length:
        raise TruncatedFrameError(
            f"frame declares {length} payload bytes but carries {len(view) - HEADER_BYTES}"
        )
    if len(view) > HEADER_BYTES + length:
        raise MalformedPayloadError(
            f"frame declares {length} payload bytes but carries {len(view) - HEADER_BYTES}"
        )
    try:
        mt = MessageType(mtype)
    except ValueError:
        raise UnknownTypeError(f"unknown message type {mtype} at offset 3") from None
    if flags != 0:
        raise MalformedPayloadError(f"reserved flags {flags:#x} at offset 4 are not zero")
    if link != link_id:
        raise ForeignMessageError(f"message of link {link:#010x}, this link is {link_id:#010x}")
    if (mt in NUMBERED) != (seq != 0):
        raise MalformedPayloadError(
            f"{mt.name} with message number {seq}: numbered types need seq >= 1, control 0"
        )
    try:
        message = _decode_payload(mt, epoch, view[HEADER_BYTES:])
    except (CodecError, UnicodeDecodeError, struct.error) as e:
        raise MalformedPayloadError(f"{mt.name} seq {seq}: {e}") from None
    except ChannelError as e:
        if isinstance(e, (MalformedPayloadError, OversizedFrameError)):
            raise
        raise MalformedPayloadError(f"{mt.name} seq {seq}: {e}") from None
    return Frame(mt, link, seq, epoch, message)


def link_id_of(name: str) -> int:
    """A link's 32-bit id from its name (both ends derive the same id from the same name)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


class TagBatchLike(Protocol):
    """What :func:`time_basis_epoch` reads of a ``coincidence.TagBatch``."""

    @property
    def timestamps(self) -> np.ndarray: ...
    @property
    def channels(self) -> np.ndarray: ...
    @property
    def begin_ps(self) -> int: ...
    @property
    def end_ps(self) -> int: ...


def time_basis_epoch(
    epoch: int,
    batch: TagBatchLike,
    basis_of_channel: Mapping[int, int],
    resolution_ps: int,
) -> TimeBasisEpoch:
    """The epoch message of a tag batch: its times and each tag's basis, outcomes dropped.

    ``basis_of_channel`` maps each detector channel to its basis bit (e.g.
    ``{0: 0, 1: 0, 2: 1, 3: 1}`` for H, V, D, A); tags on other channels are
    left out. This is the one place that sees channels: what it returns has no
    field an outcome could travel in.
    """
    lut = np.full(256, 255, np.uint8)
    for ch, basis in basis_of_channel.items():
        if basis not in (0, 1):
            raise ChannelError(f"basis of channel {ch} must be 0 or 1, got {basis}")
        if not 0 <= ch < 255:
            raise ChannelError(f"channel {ch} out of range")
        lut[ch] = basis
    b = lut[batch.channels]
    keep = b != 255
    return TimeBasisEpoch(
        epoch, batch.begin_ps, batch.end_ps, resolution_ps, batch.timestamps[keep], b[keep]
    )
