"""The channel's protocol state machine (sans-I/O): frames in, events and frames out.

One :class:`ChannelSession` per link end. It numbers outgoing messages,
keeps the unacknowledged ones for resending, and delivers incoming ones
exactly once and in order:

- A numbered message is delivered only if its number is the next expected
  one; a number already delivered is refused as a replay (a duplicate resend
  after a reconnect looks the same and is acknowledged again so the sender
  stops resending), a number beyond the next expected one is refused as out of
  order and answered with a resume request. Epoch times and pair replies must
  also carry a strictly larger epoch than the last delivered one of their
  type, so an epoch is never delivered twice even if a sender numbered it twice.
- On every (re)connect each side sends HELLO with the next number it expects;
  the peer drops what that acknowledges and resends the rest in order
  (go-back-N, e.g. Bertsekas and Gallager, *Data Networks*, 2nd ed., sec. 2.4).
- Every refusal is a :class:`~channel.ProtocolError`, counted under its
  ``kind``; nothing the peer sends raises out of :meth:`receive`.

Integrity and authenticity come from the transport (CurveZMQ: every message
authenticated with Poly1305 under per-connection keys, see docs/CHANNEL.md);
the numbering here is what makes delivery exactly-once across reconnects.
Timers live in the I/O layer, which calls :meth:`connected`,
:meth:`resend_unacked` and drains :meth:`outgoing`.
"""

from __future__ import annotations

import secrets
import struct
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from ._errors import AcknowledgementError, ChannelError, OutOfOrderError, ProtocolError, ReplayError
from ._messages import (
    EPOCH_ORDERED,
    MAX_FRAME_BYTES,
    NUMBERED,
    Ack,
    Frame,
    Hello,
    Message,
    MessageType,
    decode_frame,
    encode_frame,
    message_type,
)

_SEQ_OFFSET = 10
"""Byte offset of the message number in a frame header (see channel._messages)."""
_SEQ = struct.Struct("<Q")

MAX_UNACKED = 4096
"""Default largest number of sent but unacknowledged messages kept for resending."""


class ChannelFullError(ChannelError):
    """Too many messages are waiting for the peer's acknowledgement: slow down."""


@dataclass(frozen=True)
class Delivered:
    """A numbered message from the peer, delivered once and in order."""

    seq: int
    message: Message


@dataclass(frozen=True)
class Acknowledged:
    """The peer confirmed delivery of our numbered messages up to ``upto``."""

    upto: int


@dataclass(frozen=True)
class PeerHello:
    """The peer (re)connected and expects our message ``next_seq`` next (we resend from there)."""

    next_seq: int


@dataclass(frozen=True)
class Refused:
    """A frame from the peer was refused (and counted under ``error.kind``)."""

    error: ProtocolError


Event = Delivered | Acknowledged | PeerHello | Refused


class ChannelSession:
    """Exactly-once, in-order delivery of numbered messages over a reconnecting transport.

    Args:
        link_id: the link's 32-bit id (:func:`~channel.link_id_of`); other ids are foreign.
        max_frame_bytes: largest frame accepted or sent.
        max_unacked: largest number of unacknowledged messages kept (then
            :class:`ChannelFullError` on :meth:`send`).
        last_epochs: the last delivered epoch per epoch-ordered type, as saved from
            :attr:`last_epochs` before a restart, so no epoch is delivered twice across it.
        session_id: this session's id (random 64 bits if None); a restart makes a new one.
    """

    def __init__(
        self,
        link_id: int,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        max_unacked: int = MAX_UNACKED,
        last_epochs: Mapping[MessageType, int] | None = None,
        session_id: int | None = None,
    ) -> None:
        if not 0 <= link_id < 2**32:
            raise ChannelError(f"link_id must be a 32-bit unsigned integer, got {link_id}")
        self.link_id = link_id
        self.max_frame_bytes = max_frame_bytes
        self.max_unacked = max_unacked
        self._next_send = 1
        self._unacked: OrderedDict[int, bytes] = OrderedDict()
        self._next_expected = 1
        self._last_epoch: dict[MessageType, int] = dict(last_epochs or {})
        self.session_id = secrets.randbits(64) if session_id is None else session_id
        self._peer_session: int | None = None
        self._outbox: list[bytes] = []
        self._ack_due = False
        self._resume_asked_for = 0
        self._resend_mark: int | None = None
        self.counters: Counter[str] = Counter()
        """``sent``, ``resent``, ``delivered``, ``acked`` and one entry per refusal kind."""

    # -- sending ----------------------------------------------------------------------
    def send(self, message: Message) -> bytes:
        """Number ``message``, keep it until acknowledged, and return its frame to transmit."""
        if message_type(message) not in NUMBERED:
            raise ChannelError("control messages are generated by the session itself")
        if len(self._unacked) >= self.max_unacked:
            raise ChannelFullError(
                f"{len(self._unacked)} messages await acknowledgement (limit {self.max_unacked})"
            )
        seq = self._next_send
        frame = encode_frame(message, self.link_id, seq, self.max_frame_bytes)
        self._next_send += 1
        self._unacked[seq] = frame
        self.counters["sent"] += 1
        return frame

    def connected(self) -> list[bytes]:
        """Frames to send when this side sees a new connection: HELLO with our next expected.

        Marks what was sent before it: the peer's HELLO in reply makes this side
        resend only those (later ones travel on the new connection already).
        """
        self._resend_mark = self.last_sent
        return self.hello()

    def hello(self) -> list[bytes]:
        """A HELLO frame (the reply to the peer's HELLO), without marking anything."""
        self._resume_asked_for = self._next_expected
        return [self._control(Hello(self._next_expected, self.session_id))]

    def resend_unacked(self) -> list[bytes]:
        """Every unacknowledged frame, in order (the I/O layer calls this on its resend timer)."""
        frames = list(self._unacked.values())
        self.counters["resent"] += len(frames)
        return frames

    def resend_oldest(self) -> list[bytes]:
        """The oldest unacknowledged frame, if any (a backstop timer's cheap probe).

        If the peer already has it, its repeated acknowledgement clears the
        backlog; if not, it is delivered, or (when later ones went missing too)
        the peer's resume request makes this side resend the rest.
        """
        if not self._unacked:
            return []
        self.counters["resent"] += 1
        return [next(iter(self._unacked.values()))]

    @property
    def oldest_unacked(self) -> int:
        """The number of the oldest unacknowledged message (0 when all are acknowledged)."""
        return next(iter(self._unacked), 0)

    @property
    def unacked(self) -> int:
        """Number of sent messages not yet acknowledged."""
        return len(self._unacked)

    @property
    def next_expected(self) -> int:
        """The next message number this side will deliver."""
        return self._next_expected

    @property
    def last_sent(self) -> int:
        """The number of the last message sent (0 before the first)."""
        return self._next_send - 1

    def outgoing(self) -> list[bytes]:
        """Frames the session wants sent (acknowledgements, resume requests, resends)."""
        out = self._outbox
        self._outbox = []
        if self._ack_due:
            out.append(self._control(Ack(self._next_expected - 1)))
            self._ack_due = False
        return out

    def _control(self, message: Message) -> bytes:
        return encode_frame(message, self.link_id, 0, self.max_frame_bytes)

    # -- receiving --------------------------------------------------------------------
    def receive(self, data: bytes | memoryview) -> list[Event]:
        """Handle one frame from the peer; never raises for anything the peer can send."""
        try:
            frame = decode_frame(data, self.link_id, self.max_frame_bytes)
            return self._handle(frame)
        except ProtocolError as e:
            self.counters[e.kind] += 1
            return [Refused(e)]

    def _handle(self, frame: Frame) -> list[Event]:
        msg = frame.message
        if isinstance(msg, Hello):
            return self._on_hello(msg.next_seq, msg.session)
        if isinstance(msg, Ack):
            return self._on_ack(msg.upto)
        seq = frame.seq
        if seq < self._next_expected:
            self._ack_due = True  # the sender missed our acknowledgement: repeat it
            raise ReplayError(
                f"{frame.type.name} message {seq} (epoch {frame.epoch}) was already delivered "
                f"(next expected {self._next_expected})"
            )
        if seq > self._next_expected:
            if self._resume_asked_for != self._next_expected:
                self._resume_asked_for = self._next_expected
                self._outbox.append(self._control(Hello(self._next_expected, self.session_id)))
            raise OutOfOrderError(
                f"{frame.type.name} message {seq} arrived before message {self._next_expected}"
            )
        if frame.type in EPOCH_ORDERED:
            last = self._last_epoch.get(frame.type)
            if last is not None and frame.epoch <= last:
                # numbered afresh but an epoch already delivered: consume the number, refuse it
                self._next_expected += 1
                self._ack_due = True
                raise ReplayError(
                    f"{frame.type.name} epoch {frame.epoch} was already delivered "
                    f"(last delivered epoch {last})"
                )
            self._last_epoch[frame.type] = frame.epoch
        self._next_expected += 1
        self._ack_due = True
        self.counters["delivered"] += 1
        return [Delivered(seq, msg)]

    def _on_ack(self, upto: int) -> list[Event]:
        if upto >= self._next_send:
            raise AcknowledgementError(
                f"acknowledgement up to message {upto}, but only {self._next_send - 1} were sent"
            )
        dropped = 0
        while self._unacked and next(iter(self._unacked)) <= upto:
            self._unacked.popitem(last=False)
            dropped += 1
        if not dropped:
            return []
        self.counters["acked"] += dropped
        return [Acknowledged(upto)]

    @property
    def last_epochs(self) -> dict[MessageType, int]:
        """The last delivered epoch per epoch-ordered type (save it to restore after a restart)."""
        return dict(self._last_epoch)

    def _peer_restarted(self) -> None:
        """The peer is a new session: number both ways from 1 again, keep the epoch record."""
        self.counters["peer_restarts"] += 1
        self._next_expected = 1
        self._resume_asked_for = 0
        self._resend_mark = None
        frames = list(self._unacked.values())
        self._unacked.clear()
        for seq, frame in enumerate(frames, 1):
            self._unacked[seq] = frame[:_SEQ_OFFSET] + _SEQ.pack(seq) + frame[_SEQ_OFFSET + 8 :]
        self._next_send = len(frames) + 1

    def _on_hello(self, next_seq: int, peer_session: int) -> list[Event]:
        if self._peer_session is None:
            self._peer_session = peer_session
        elif peer_session != self._peer_session:
            self._peer_session = peer_session
            self._peer_restarted()
        if next_seq > self._next_send:
            raise AcknowledgementError(
                f"peer expects message {next_seq}, but only {self._next_send - 1} were sent"
            )
        events = self._on_ack(next_seq - 1) if next_seq > 1 else []
        limit = self.last_sent if self._resend_mark is None else self._resend_mark
        self._resend_mark = None
        frames = [f for seq, f in self._unacked.items() if seq <= limit]
        self.counters["resent"] += len(frames)
        self._outbox.extend(frames)
        return [*events, PeerHello(next_seq)]
