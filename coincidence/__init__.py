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
# isort: split
from ._counter import MAX_DELAY_PS as MAX_DELAY_PS
from ._counter import CoincidenceCounter as CoincidenceCounter
from ._counter import CoincidenceReport as CoincidenceReport
from ._counter import accidentals_matrix as accidentals_matrix
from ._histogram import CorrelationHistogram as CorrelationHistogram
from ._histogram import HistogramReport as HistogramReport
from ._synthetic import generate_pairs as generate_pairs
from ._synthetic import generate_two_clocks as generate_two_clocks

# isort: split
from ._files import DEFAULT_CHUNK_RECORDS as DEFAULT_CHUNK_RECORDS
from ._files import PtuHeader as PtuHeader
from ._files import channel_capacity as channel_capacity
from ._files import count_records as count_records
from ._files import iter_npz as iter_npz
from ._files import iter_ptu as iter_ptu
from ._files import iter_tag_file as iter_tag_file
from ._files import n_channels_hint as n_channels_hint
from ._files import read_npz as read_npz
from ._files import read_ptu as read_ptu
from ._files import read_ptu_header as read_ptu_header
from ._files import read_ptu_markers as read_ptu_markers
from ._files import read_tag_file as read_tag_file
from ._files import write_npz as write_npz

# isort: split
from ._delay import ClockDrift as ClockDrift
from ._delay import DelayEstimate as DelayEstimate
from ._delay import DriftTracker as DriftTracker
from ._delay import find_delay as find_delay
from ._delay import find_delay_in_batch as find_delay_in_batch
from ._delay import track_drift as track_drift
from ._qkd import BasisQber as BasisQber
from ._qkd import DecoyResult as DecoyResult
from ._qkd import FiberLink as FiberLink
from ._qkd import QberReport as QberReport
from ._qkd import QkdInputError as QkdInputError
from ._qkd import RoleMap as RoleMap
from ._qkd import bbm92_asymptotic as bbm92_asymptotic
from ._qkd import bbm92_finite as bbm92_finite
from ._qkd import bbm92_finite_key_length as bbm92_finite_key_length
from ._qkd import bbm92_key_rate as bbm92_key_rate
from ._qkd import decoy_bb84 as decoy_bb84
from ._qkd import h2 as h2
from ._qkd import max_distance_km as max_distance_km
from ._qkd import phase_error_upper_bound as phase_error_upper_bound
from ._qkd import qber_from_matrix as qber_from_matrix
from ._qkd import qber_interval as qber_interval

# isort: split
from ._clocksync import ClockLock as ClockLock
from ._clocksync import ClockState as ClockState
from ._clocksync import ClockTracker as ClockTracker
from ._clocksync import acquire_clock as acquire_clock
