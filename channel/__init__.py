"""The classical channel between two nodes: authentication, framing, replay refusal, compression.

Layers (see docs/CHANNEL.md): :mod:`channel._codec` compresses times and
indices (Numba Rice coder); :mod:`channel._messages` defines what crosses the
link and its versioned frames; :class:`ChannelSession` is the sans-I/O state
machine that numbers, acknowledges, resumes and refuses; :class:`ChannelEndpoint`
runs it over a ZeroMQ CURVE socket with pinned keys. ``channel.testing`` ships
the WAN emulator. Private modules are re-exported here: import from ``channel``.
"""

from ._errors import AcknowledgementError as AcknowledgementError
from ._errors import ChannelError as ChannelError
from ._errors import CodecError as CodecError
from ._errors import ForeignMessageError as ForeignMessageError
from ._errors import KeyFileError as KeyFileError
from ._errors import MalformedPayloadError as MalformedPayloadError
from ._errors import OutOfOrderError as OutOfOrderError
from ._errors import OversizedFrameError as OversizedFrameError
from ._errors import ProtocolError as ProtocolError
from ._errors import ReplayError as ReplayError
from ._errors import TruncatedFrameError as TruncatedFrameError
from ._errors import UnknownTypeError as UnknownTypeError
from ._errors import VersionError as VersionError

# isort: split
from ._codec import BLOCK_EVENTS as BLOCK_EVENTS
from ._codec import decode_indices as decode_indices
from ._codec import decode_times as decode_times
from ._codec import delta_entropy_bits as delta_entropy_bits
from ._codec import encode_indices as encode_indices
from ._codec import encode_times as encode_times
from ._codec import pack_bits as pack_bits
from ._codec import rice_decode as rice_decode
from ._codec import rice_encode as rice_encode
from ._codec import unpack_bits as unpack_bits

# isort: split
from ._messages import HEADER_BYTES as HEADER_BYTES
from ._messages import MAX_EVENTS as MAX_EVENTS
from ._messages import MAX_FRAME_BYTES as MAX_FRAME_BYTES
from ._messages import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._messages import Ack as Ack
from ._messages import Frame as Frame
from ._messages import Hello as Hello
from ._messages import Message as Message
from ._messages import MessageType as MessageType
from ._messages import PairReply as PairReply
from ._messages import Positions as Positions
from ._messages import TimeBasisEpoch as TimeBasisEpoch
from ._messages import TypedPayload as TypedPayload
from ._messages import decode_frame as decode_frame
from ._messages import encode_frame as encode_frame
from ._messages import link_id_of as link_id_of
from ._messages import time_basis_epoch as time_basis_epoch

# isort: split
from ._session import Acknowledged as Acknowledged
from ._session import ChannelFullError as ChannelFullError
from ._session import ChannelSession as ChannelSession
from ._session import Delivered as Delivered
from ._session import Event as Event
from ._session import PeerHello as PeerHello
from ._session import Refused as Refused

# isort: split
from ._endpoint import ChannelEndpoint as ChannelEndpoint
from ._keys import KeyPair as KeyPair
from ._keys import generate_keys as generate_keys
from ._keys import key_paths as key_paths
from ._keys import load_key_pair as load_key_pair
from ._keys import load_public_key as load_public_key
