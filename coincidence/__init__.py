"""qnet's coincidence core: time tags -> singles, coincidences, delays, QBER and key rates.

Pure numpy + numba; imports nothing else of qnet. Private modules are
re-exported here (``import X as X`` marks a re-export): import from
``coincidence``, not from ``coincidence._x``.
"""

from ._errors import ChannelError as ChannelError
from ._errors import CoincidenceError as CoincidenceError
from ._errors import NoSignificantPeakError as NoSignificantPeakError
from ._errors import TagBatchError as TagBatchError
from ._errors import TagFileError as TagFileError
from ._errors import TagOrderError as TagOrderError
from ._tags import MAX_CHANNELS as MAX_CHANNELS
from ._tags import TagBatch as TagBatch

# -- re-exports of the other modules go below, one block per module --
