"""qnet's coincidence core: time tags -> singles, coincidences, delays, QBER and key rates.

Pure numpy + numba; imports nothing else of qnet. Private modules are
re-exported here: import from ``coincidence``, not from ``coincidence._x``.
"""

from ._errors import (
    ChannelError,
    CoincidenceError,
    NoSignificantPeakError,
    TagBatchError,
    TagFileError,
    TagOrderError,
)
from ._tags import MAX_CHANNELS, TagBatch

# -- re-exports of the other modules go below, one block per module --

__all__ = [
    "MAX_CHANNELS",
    "ChannelError",
    "CoincidenceError",
    "NoSignificantPeakError",
    "TagBatch",
    "TagBatchError",
    "TagFileError",
    "TagOrderError",
]
