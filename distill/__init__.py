"""qnet's distillation room: sifted bits -> error correction -> verification -> amplification.

Pure functions and message-driven state machines, no I/O (sans-I/O): the same
code runs over the classical channel, the emulated link or a test that tampers
with one message. Imports only ``coincidence`` of qnet. Private modules are
re-exported here: import from ``distill``.
"""

from ._errors import AuthenticationError as AuthenticationError
from ._errors import DistillError as DistillError
from ._errors import DistillInputError as DistillInputError
from ._errors import EstimationAbort as EstimationAbort
from ._errors import KeyPoolExhaustedError as KeyPoolExhaustedError
from ._errors import ProtocolError as ProtocolError

# isort: split
from ._auth import FRAME_AUTH_BYTES as FRAME_AUTH_BYTES
from ._auth import MIN_AUTH_SECRET_BYTES as MIN_AUTH_SECRET_BYTES
from ._auth import Authenticator as Authenticator
from ._auth import ChannelAuth as ChannelAuth
from ._auth import FrameKeyStream as FrameKeyStream
from ._auth import KeyPool as KeyPool
from ._auth import WegmanCarterAuth as WegmanCarterAuth
from ._bits import poly_hash64 as poly_hash64
from ._block import KeyBlock as KeyBlock
from ._block import LeakAccount as LeakAccount
from ._cascade import CascadeAlice as CascadeAlice
from ._cascade import CascadeBob as CascadeBob
from ._cascade import CascadeParams as CascadeParams
from ._cascade import choose_params as choose_params
from ._cascade import reconcile as reconcile
from ._finite import FiniteKeyConfig as FiniteKeyConfig
from ._finite import QberEstimate as QberEstimate
from ._finite import abort_probability as abort_probability
from ._finite import optimal_sample_size as optimal_sample_size
from ._finite import qber_interval as qber_interval
from ._finite import secret_key_length as secret_key_length
from ._messages import MAX_FRAME_BITS as MAX_FRAME_BITS
from ._messages import EcDone as EcDone
from ._messages import EcStart as EcStart
from ._messages import Message as Message
from ._messages import ParityQuery as ParityQuery
from ._messages import ParityReply as ParityReply
from ._messages import SampleAnnounce as SampleAnnounce
from ._messages import SampleReply as SampleReply
from ._messages import SiftMessage as SiftMessage
from ._messages import VerifyResult as VerifyResult
from ._messages import VerifyTag as VerifyTag
from ._messages import decode as decode
from ._messages import encode as encode
from ._session import AliceFrame as AliceFrame
from ._session import BobFrame as BobFrame
from ._session import FrameInfo as FrameInfo
from ._session import hash_collision_bound as hash_collision_bound
from ._sift import EstimationResult as EstimationResult
from ._sift import SiftedKey as SiftedKey
from ._sift import answer_sample as answer_sample
from ._sift import conclude_sample as conclude_sample
from ._sift import disclose_sample as disclose_sample
from ._sift import sample_positions as sample_positions
from ._sift import sift_analysing as sift_analysing
from ._sift import sift_peer as sift_peer
from ._toeplitz import toeplitz_hash as toeplitz_hash
from ._toeplitz import toeplitz_seed as toeplitz_seed
