"""The exception tree of the coincidence core: every error is a ValueError subclass."""

from __future__ import annotations


class CoincidenceError(ValueError):
    """Base class of every error raised by ``coincidence``."""


class TagBatchError(CoincidenceError):
    """A tag batch is malformed: lengths, dtypes, or its begin/end interval."""


class TagOrderError(TagBatchError):
    """Timestamps decrease somewhere; ``index`` is the first offending position."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


class ChannelError(TagBatchError):
    """A channel number is negative or not below the configured channel count."""


class NoSignificantPeakError(CoincidenceError):
    """A cross-correlation has no peak that stands out of the background."""


class TagFileError(CoincidenceError):
    """A tag file is truncated, foreign, or of an unsupported record type."""
