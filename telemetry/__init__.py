"""qnet's telemetry: record schema, MQTT publisher with outbox, MQTT -> InfluxDB bridge.

Imports nothing of drivers/ or controller/. Private modules are re-exported
here (``import X as X`` marks a re-export).
"""

# -- re-exports of the modules go below, one block per module --
from ._bridge import Bridge as Bridge
from ._bridge import BridgeStats as BridgeStats
from ._outbox import Outbox as Outbox
from ._outbox import OutboxFull as OutboxFull
from ._outbox import Spool as Spool
from ._publisher import Publisher as Publisher
from ._publisher import backoff_s as backoff_s
from ._schema import MEASUREMENTS as MEASUREMENTS
from ._schema import NODE_NAME_PATTERN as NODE_NAME_PATTERN
from ._schema import LineProtocolError as LineProtocolError
from ._schema import Measurement as Measurement
from ._schema import Record as Record
from ._schema import SchemaError as SchemaError
from ._schema import check_node_name as check_node_name
from ._schema import coincidences as coincidences
from ._schema import command_topic as command_topic
from ._schema import detector as detector
from ._schema import health as health
from ._schema import interlock as interlock
from ._schema import key_rate as key_rate
from ._schema import laser as laser
from ._schema import link as link
from ._schema import parse_lines as parse_lines
from ._schema import polarization as polarization
from ._schema import power_meter as power_meter
from ._schema import qber as qber
from ._schema import reply_topic as reply_topic
from ._schema import singles as singles
from ._schema import status_topic as status_topic
from ._schema import telemetry_topic as telemetry_topic
from ._schema import to_line as to_line
from ._schema import to_lines as to_lines
from ._schema import validate as validate
from ._settings import BridgeSettings as BridgeSettings
from ._settings import BrokerSettings as BrokerSettings
from ._settings import InfluxSettings as InfluxSettings
from ._settings import OutboxSettings as OutboxSettings
from ._settings import PublisherSettings as PublisherSettings
from ._settings import Secret as Secret
from ._settings import SettingsError as SettingsError
from ._settings import SpoolSettings as SpoolSettings
from ._settings import TlsSettings as TlsSettings
from ._settings import error_input as error_input
from ._settings import format_validation_errors as format_validation_errors
from ._settings import load_bridge_settings as load_bridge_settings
