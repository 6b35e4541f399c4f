"""qnet's instrument drivers: transports, one module per instrument model, and sim/ emulators.

Imports nothing of controller/ or telemetry/. Private modules are re-exported
here (``import X as X`` marks a re-export).
"""

from ._tagsource import TagSource as TagSource

# -- re-exports of the other modules go below, one block per module --
# isort: split
from ._errors import ConnectionLost as ConnectionLost
from ._errors import IdentityMismatch as IdentityMismatch
from ._errors import InstrumentError as InstrumentError
from ._errors import InstrumentReportedError as InstrumentReportedError
from ._errors import InstrumentTimeout as InstrumentTimeout
from ._errors import LimitError as LimitError
from ._errors import UnexpectedReply as UnexpectedReply
from ._instrument import Instrument as Instrument
from ._instrument import ReconnectPolicy as ReconnectPolicy
from ._instrument import limit_unit as limit_unit
from ._properties import control as control
from ._properties import measurement as measurement
from ._properties import switch as switch
from ._registry import DRIVERS as DRIVERS
from ._registry import make_instrument as make_instrument
from ._registry import make_transport as make_transport
from ._replay import FileReplaySource as FileReplaySource
from ._resources import socket_address as socket_address
from ._resources import with_port as with_port
from ._tagframes import encode_frame as encode_frame
from ._transport import SerialTransport as SerialTransport
from ._transport import Transport as Transport
from ._transport import VisaTransport as VisaTransport
from ._zmq import ZmqTransport as ZmqTransport
from .idq_id120 import IDQuantiqueID120 as IDQuantiqueID120
from .idq_id1000 import IDQTagStream as IDQTagStream
from .idq_id1000 import IDQuantiqueID1000 as IDQuantiqueID1000
from .keithley_2400 import Keithley2400 as Keithley2400
from .meadowlark_d3050 import MeadowlarkD3050 as MeadowlarkD3050
from .swabian import SwabianTagSource as SwabianTagSource
from .thorlabs_cld1015 import ThorlabsCLD1015 as ThorlabsCLD1015
from .thorlabs_pm100 import ThorlabsPM100 as ThorlabsPM100
