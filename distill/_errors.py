"""The exception tree of the distillation room: every error is a ValueError subclass."""

from __future__ import annotations


class DistillError(ValueError):
    """Base class of every error raised by ``distill``."""


class DistillInputError(DistillError):
    """A local argument (key, parameters, sizes) is out of its meaningful range."""


class ProtocolError(DistillError):
    """A message from the peer is malformed, out of order or inconsistent.

    The frame it belongs to must be discarded; the session object that raised
    it refuses further messages for that frame.
    """


class AuthenticationError(ProtocolError):
    """A message's authentication tag does not verify (tampered or foreign)."""


class KeyPoolExhaustedError(DistillError):
    """The authentication key pool has fewer bits left than a tag needs."""


class EstimationAbort(DistillError):
    """The sampled QBER exceeds the tolerated QBER fixed in advance: no key from this frame."""
