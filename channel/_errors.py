"""The channel's exception tree: one base class, one subclass per kind of refusal.

Every refusal of peer input is a :class:`ProtocolError` subclass carrying
what was wrong and where (which field, which offset), so the link upkeep can
count it by ``kind`` and carry on; nothing the peer sends can raise anything
else out of the message layer.
"""

from __future__ import annotations


class ChannelError(Exception):
    """Base of every error raised by ``channel``."""


class KeyFileError(ChannelError):
    """A CURVE key file is missing, unreadable, malformed or too widely readable."""


class CodecError(ChannelError):
    """Times or bases cannot be encoded (bad local input) or a compressed block is corrupt."""


class ProtocolError(ChannelError):
    """Input from the peer was refused; ``kind`` names the counter it is filed under."""

    kind = "protocol"


class TruncatedFrameError(ProtocolError):
    """A frame is shorter than its header or than the length its header declares."""

    kind = "truncated"


class OversizedFrameError(ProtocolError):
    """A frame, or a count inside it, is larger than the configured limit."""

    kind = "oversized"


class VersionError(ProtocolError):
    """Wrong magic bytes or an unsupported protocol version."""

    kind = "version"


class UnknownTypeError(ProtocolError):
    """The message type byte is not one this version knows."""

    kind = "unknown_type"


class MalformedPayloadError(ProtocolError):
    """The header is fine but the payload does not decode (bad field, corrupt block)."""

    kind = "malformed"


class ForeignMessageError(ProtocolError):
    """A message of another link (its link id is not ours)."""

    kind = "foreign"


class ReplayError(ProtocolError):
    """A message number or epoch that was already delivered (a replay or a duplicate resend)."""

    kind = "replayed"


class OutOfOrderError(ProtocolError):
    """A message number beyond the next expected one (something before it is missing)."""

    kind = "out_of_order"


class AcknowledgementError(ProtocolError):
    """The peer acknowledged a message number that was never sent."""

    kind = "bad_ack"
