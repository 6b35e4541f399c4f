"""The QKD link engine: detections at two sites -> identical secret keys in both key stores.

``SenderLink`` (Alice) and ``AnalyserLink`` (Bob) are sans-I/O: tag batches and peer
messages in, messages for the peer out (see ``_engine``'s docstring for the protocol).
``LinkPump`` / ``run_link`` drive one over a ``channel.ChannelEndpoint``;
``link_records`` turns a report into telemetry records. ``qkd_link.testing`` ships
synthetic two-site tags and an in-process wire.
"""

from ._config import LABEL_BITS as LABEL_BITS
from ._config import LinkConfig as LinkConfig
from ._config import LinkConfigError as LinkConfigError
from ._engine import AnalyserLink as AnalyserLink
from ._engine import BlockSink as BlockSink
from ._engine import FrameRecord as FrameRecord
from ._engine import LinkReport as LinkReport
from ._engine import SenderLink as SenderLink
from ._pairing import pair_indices as pair_indices
from ._records import link_record as link_record
from ._runner import LinkPump as LinkPump
from ._runner import run_link as run_link
from ._service import LinkService as LinkService
from ._service import QkdLinkConfig as QkdLinkConfig
