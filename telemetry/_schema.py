"""Every telemetry measurement qnet emits: its tags, its fields, and the one line-protocol codec.

InfluxDB schema guidance, applied: tags are the few low-cardinality identities an operator
filters by (``node``, ``link``, ``device``, ``channel``, ``basis``...); every number is a field;
no run ids or sequence numbers in tags; timestamps are set at the source, in ns.

Every record also carries an integer ``seq`` field (a per-publisher sequence number assigned by
the publisher's outbox) so that a consumer can count exactly what arrived.

A point's identity is measurement + tag set + timestamp, so a replayed point overwrites itself
in InfluxDB (and in VictoriaMetrics started with ``-dedup.minScrapeInterval``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

FieldValue = float | int | bool | str

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
SEQ_FIELD = "seq"
MAX_STRING_FIELD_CHARS = 1024
MAX_TAG_VALUE_CHARS = 128


class SchemaError(ValueError):
    """A record does not match the schema: names which measurement, tag or field was wrong."""


class LineProtocolError(ValueError):
    """A line-protocol text is malformed; names the line number and what was wrong."""


@dataclass(frozen=True, slots=True)
class Measurement:
    """The definition of one measurement: required/optional tags and typed fields."""

    name: str
    tags: tuple[str, ...]
    fields: Mapping[str, type]
    optional_tags: tuple[str, ...] = ()
    required_fields: tuple[str, ...] = ()
    doc: str = ""

    def allowed_tags(self) -> frozenset[str]:
        """All tag keys a record of this measurement may carry."""
        return frozenset(self.tags) | frozenset(self.optional_tags)


def _m(
    name: str,
    tags: tuple[str, ...],
    fields: dict[str, type],
    *,
    optional_tags: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
    doc: str = "",
) -> Measurement:
    full = dict(fields)
    full[SEQ_FIELD] = int
    return Measurement(name, tags, MappingProxyType(full), optional_tags, required, doc)


MEASUREMENTS: Mapping[str, Measurement] = MappingProxyType(
    {
        m.name: m
        for m in (
            _m(
                "singles",
                ("node", "channel"),
                {"counts": int, "rate_hz": float, "integration_s": float},
                required=("counts",),
                doc="detector singles per time-tagger channel over one integration window",
            ),
            _m(
                "coincidences",
                ("node", "link", "channel_a", "channel_b"),
                {
                    "counts": int,
                    "accidentals": float,
                    "car": float,
                    "rate_hz": float,
                    "window_ps": int,
                    "delay_ps": int,
                    "integration_s": float,
                },
                required=("counts",),
                doc="coincidences, estimated accidentals and coincidence-to-accidental ratio "
                "for one channel pair",
            ),
            _m(
                "qber",
                ("node", "link", "basis"),
                {
                    "qber": float,
                    "errors": int,
                    "sifted": int,
                    "qber_low": float,
                    "qber_high": float,
                },
                required=("qber",),
                doc="quantum bit error ratio per measurement basis (basis = z | x | ...), "
                "with its 1-sigma Wilson interval [qber_low, qber_high]",
            ),
            _m(
                "key_rate",
                ("node", "link"),
                {"sifted_bps": float, "secure_bps": float, "qber_z": float, "qber_x": float},
                required=("sifted_bps", "secure_bps"),
                doc="sifted and secure key rate of one link in bit/s",
            ),
            _m(
                "laser",
                ("node", "device"),
                {"current_a": float, "temperature_k": float, "power_w": float, "output_on": bool},
                doc="pump/source laser: drive current, temperature, optical power, output state",
            ),
            _m(
                "detector",
                ("node", "device"),
                {
                    "bias_current_a": float,
                    "bias_voltage_v": float,
                    "temperature_k": float,
                    "efficiency": float,
                    "dead_time_s": float,
                    "state": str,
                    "armed": bool,
                },
                optional_tags=("channel",),
                doc="single-photon detector: bias, temperature, state (armed, latched, ...)",
            ),
            _m(
                "power_meter",
                ("node", "device"),
                {"power_w": float, "wavelength_m": float},
                required=("power_w",),
                doc="optical power meter reading",
            ),
            _m(
                "polarization",
                ("node", "device", "axis"),
                {"setpoint": float, "readback": float},
                doc="polarization controller setpoint (and readback) per axis/paddle, SI units "
                "of the controller (rad for retarders and paddles)",
            ),
            _m(
                "health",
                ("node", "device"),
                {
                    "ok": bool,
                    "state": str,
                    "errors": int,
                    "latency_s": float,
                    "message": str,
                },
                required=("ok",),
                doc="device health as seen by the supervisor",
            ),
            _m(
                "interlock",
                ("node", "interlock"),
                {"active": bool, "event": str, "reason": str, "device": str},
                required=("active", "event"),
                doc="interlock trip/clear events (shown as Grafana annotations)",
            ),
            _m(
                "link",
                ("node", "link", "role"),
                {
                    "lock_state": str,
                    "offset_ps": float,
                    "offset_uncertainty_ps": float,
                    "ppm": float,
                    "ppm_uncertainty": float,
                    "lock_time_s": float,
                    "epochs": int,
                    "epochs_unanswered": int,
                    "epochs_without_lock": int,
                    "sifted_bits": int,
                    "sifted_bps": float,
                    "qber_z": float,
                    "qber_z_low": float,
                    "qber_z_high": float,
                    "qber_x": float,
                    "qber_x_low": float,
                    "qber_x_high": float,
                    "secret_bits": int,
                    "secret_bps": float,
                    "ec_efficiency": float,
                    "blocks_stored": int,
                    "blocks_discarded": int,
                    "frames_aborted": int,
                    "channel_tx_bytes_per_s": float,
                    "channel_rx_bytes_per_s": float,
                    "channel_connected": bool,
                    "store_blocks": int,
                    "store_issuable_bytes": int,
                    "delivered_keys": int,
                    "auth_pool_bits": int,
                    "refused": int,
                },
                required=("lock_state",),
                doc="one site of a QKD link (role sender | analyser): clock lock (offset and "
                "ppm with 1-sigma uncertainties), epochs, sifted key, QBER per basis from the "
                "disclosed sample with 1-sigma Wilson intervals, secret key, EC efficiency, "
                "blocks stored/discarded, classical channel bytes/s, key store fill, keys "
                "delivered to SAEs (cumulative)",
            ),
            _m(
                "telemetry",
                ("node",),
                {
                    "outbox_records": int,
                    "outbox_dropped": int,
                    "published": int,
                    "reconnects": int,
                },
                doc="the publisher's own counters",
            ),
        )
    }
)


@dataclass(frozen=True, slots=True)
class Record:
    """One telemetry point: measurement, tags (str), typed fields and a source timestamp in ns."""

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time_ns: int

    @property
    def node(self) -> str:
        """The node this record belongs to (every measurement has a ``node`` tag)."""
        return self.tags["node"]


def _check_field(meas: Measurement, key: str, value: object, where: str) -> None:
    want = meas.fields.get(key)
    if want is None:
        raise SchemaError(
            f"{where}: unknown field {key!r} (allowed: {', '.join(sorted(meas.fields))})"
        )
    if want is bool:
        ok = isinstance(value, bool)
    elif want is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif want is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and not math.isfinite(value):  # type: ignore[arg-type]
            raise SchemaError(f"{where}: field {key!r} is not finite ({value!r})")
    else:
        ok = isinstance(value, str)
        if ok and len(value) > MAX_STRING_FIELD_CHARS:  # type: ignore[arg-type]
            raise SchemaError(f"{where}: string field {key!r} longer than {MAX_STRING_FIELD_CHARS}")
        if ok and ("\n" in value or "\r" in value):  # type: ignore[operator]
            raise SchemaError(f"{where}: string field {key!r} contains a line break")
    if not ok:
        raise SchemaError(
            f"{where}: field {key!r} must be {want.__name__}, got {type(value).__name__} "
            f"({value!r})"
        )


def validate(record: Record) -> Record:
    """Check ``record`` against its measurement's definition; return it or raise SchemaError."""
    meas = MEASUREMENTS.get(record.measurement)
    if meas is None:
        raise SchemaError(
            f"unknown measurement {record.measurement!r} (known: {', '.join(sorted(MEASUREMENTS))})"
        )
    where = f"measurement {record.measurement!r}"
    allowed = meas.allowed_tags()
    for key, value in record.tags.items():
        if key not in allowed:
            raise SchemaError(
                f"{where}: unknown tag {key!r} (allowed: {', '.join(sorted(allowed))})"
            )
        if not isinstance(value, str) or not value:
            raise SchemaError(f"{where}: tag {key!r} must be a non-empty string, got {value!r}")
        if len(value) > MAX_TAG_VALUE_CHARS or "\n" in value or "\\" in value:
            raise SchemaError(f"{where}: tag {key!r} value {value!r} too long or has \\n or \\")
    for key in meas.tags:
        if key not in record.tags:
            raise SchemaError(f"{where}: missing tag {key!r}")
    if not record.fields:
        raise SchemaError(f"{where}: a record needs at least one field")
    for key, value in record.fields.items():
        _check_field(meas, key, value, where)
    for key in meas.required_fields:
        if key not in record.fields:
            raise SchemaError(f"{where}: missing required field {key!r}")
    t = record.time_ns
    if not isinstance(t, int) or isinstance(t, bool) or t < 0 or t >= 2**63:
        raise SchemaError(f"{where}: time_ns must be a non-negative int64 in ns, got {t!r}")
    return record


def make(
    measurement: str, tags: Mapping[str, object], fields: Mapping[str, object], time_ns: int
) -> Record:
    """Build and validate a record; tag values are converted to ``str``, None fields dropped."""
    rec = Record(
        measurement,
        {k: str(v) for k, v in tags.items() if v is not None},
        {k: v for k, v in fields.items() if v is not None},  # type: ignore[misc]
        time_ns,
    )
    return validate(rec)


# -- constructor helpers: one per measurement, keyword-only, SI units -------------------------


def singles(
    *,
    node: str,
    channel: int | str,
    counts: int,
    time_ns: int,
    rate_hz: float | None = None,
    integration_s: float | None = None,
) -> Record:
    """Singles of one time-tagger channel over one integration window."""
    return make(
        "singles",
        {"node": node, "channel": channel},
        {"counts": counts, "rate_hz": _f(rate_hz), "integration_s": _f(integration_s)},
        time_ns,
    )


def coincidences(
    *,
    node: str,
    link: str,
    channel_a: int | str,
    channel_b: int | str,
    counts: int,
    time_ns: int,
    accidentals: float | None = None,
    car: float | None = None,
    rate_hz: float | None = None,
    window_ps: int | None = None,
    delay_ps: int | None = None,
    integration_s: float | None = None,
) -> Record:
    """Coincidences, accidentals and CAR of one channel pair of a link."""
    return make(
        "coincidences",
        {"node": node, "link": link, "channel_a": channel_a, "channel_b": channel_b},
        {
            "counts": counts,
            "accidentals": _f(accidentals),
            "car": _f(car),
            "rate_hz": _f(rate_hz),
            "window_ps": window_ps,
            "delay_ps": delay_ps,
            "integration_s": _f(integration_s),
        },
        time_ns,
    )


def qber(
    *,
    node: str,
    link: str,
    basis: str,
    qber: float,
    time_ns: int,
    errors: int | None = None,
    sifted: int | None = None,
    qber_low: float | None = None,
    qber_high: float | None = None,
) -> Record:
    """QBER of one basis of a link (``qber`` is a ratio in [0, 1]).

    ``qber_low`` and ``qber_high`` bound its 1-sigma confidence interval.
    """
    return make(
        "qber",
        {"node": node, "link": link, "basis": basis},
        {
            "qber": _f(qber),
            "errors": errors,
            "sifted": sifted,
            "qber_low": _f(qber_low),
            "qber_high": _f(qber_high),
        },
        time_ns,
    )


def key_rate(
    *,
    node: str,
    link: str,
    sifted_bps: float,
    secure_bps: float,
    time_ns: int,
    qber_z: float | None = None,
    qber_x: float | None = None,
) -> Record:
    """Sifted and secure key rate of a link, bit/s."""
    return make(
        "key_rate",
        {"node": node, "link": link},
        {
            "sifted_bps": _f(sifted_bps),
            "secure_bps": _f(secure_bps),
            "qber_z": _f(qber_z),
            "qber_x": _f(qber_x),
        },
        time_ns,
    )


def link(
    *,
    node: str,
    link: str,
    role: str,
    lock_state: str,
    time_ns: int,
    **fields: float | int | bool | str | None,
) -> Record:
    """One site of a QKD link; ``fields`` among the ``link`` measurement's (NaN dropped)."""
    clean = {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in fields.items()
    }
    clean["lock_state"] = lock_state
    return make("link", {"node": node, "link": link, "role": role}, clean, time_ns)


def laser(
    *,
    node: str,
    device: str,
    time_ns: int,
    current_a: float | None = None,
    temperature_k: float | None = None,
    power_w: float | None = None,
    output_on: bool | None = None,
) -> Record:
    """Laser current (A), temperature (K), optical power (W) and output state."""
    return make(
        "laser",
        {"node": node, "device": device},
        {
            "current_a": _f(current_a),
            "temperature_k": _f(temperature_k),
            "power_w": _f(power_w),
            "output_on": output_on,
        },
        time_ns,
    )


def detector(
    *,
    node: str,
    device: str,
    time_ns: int,
    channel: int | str | None = None,
    bias_current_a: float | None = None,
    bias_voltage_v: float | None = None,
    temperature_k: float | None = None,
    efficiency: float | None = None,
    dead_time_s: float | None = None,
    state: str | None = None,
    armed: bool | None = None,
) -> Record:
    """Detector bias (A or V), temperature (K), efficiency, dead time and state."""
    return make(
        "detector",
        {"node": node, "device": device, "channel": channel},
        {
            "bias_current_a": _f(bias_current_a),
            "bias_voltage_v": _f(bias_voltage_v),
            "temperature_k": _f(temperature_k),
            "efficiency": _f(efficiency),
            "dead_time_s": _f(dead_time_s),
            "state": state,
            "armed": armed,
        },
        time_ns,
    )


def power_meter(
    *, node: str, device: str, power_w: float, time_ns: int, wavelength_m: float | None = None
) -> Record:
    """Optical power meter reading in W (and the wavelength setting in m)."""
    return make(
        "power_meter",
        {"node": node, "device": device},
        {"power_w": _f(power_w), "wavelength_m": _f(wavelength_m)},
        time_ns,
    )


def polarization(
    *,
    node: str,
    device: str,
    axis: int | str,
    time_ns: int,
    setpoint: float | None = None,
    readback: float | None = None,
) -> Record:
    """Polarization controller setpoint/readback of one axis (paddle, waveplate)."""
    return make(
        "polarization",
        {"node": node, "device": device, "axis": axis},
        {"setpoint": _f(setpoint), "readback": _f(readback)},
        time_ns,
    )


def health(
    *,
    node: str,
    device: str,
    ok: bool,
    time_ns: int,
    state: str | None = None,
    errors: int | None = None,
    latency_s: float | None = None,
    message: str | None = None,
) -> Record:
    """Device health as the supervisor sees it."""
    return make(
        "health",
        {"node": node, "device": device},
        {
            "ok": ok,
            "state": state,
            "errors": errors,
            "latency_s": _f(latency_s),
            "message": message,
        },
        time_ns,
    )


def interlock(
    *,
    node: str,
    interlock: str,
    active: bool,
    event: str,
    time_ns: int,
    reason: str | None = None,
    device: str | None = None,
) -> Record:
    """An interlock event: ``event`` is ``trip`` or ``clear`` (free text allowed)."""
    return make(
        "interlock",
        {"node": node, "interlock": interlock},
        {"active": active, "event": event, "reason": reason, "device": device},
        time_ns,
    )


def _f(value: float | None) -> float | None:
    """Store numbers meant as floats as floats, so a field keeps one type in InfluxDB."""
    return None if value is None else float(value)


def with_seq(record: Record, seq: int) -> Record:
    """A copy of ``record`` carrying the publisher sequence number ``seq``."""
    return Record(
        record.measurement, record.tags, {**record.fields, SEQ_FIELD: seq}, record.time_ns
    )


# -- line protocol: the one place records become text and text becomes records ----------------

_MEAS_ESC = str.maketrans({",": r"\,", " ": r"\ "})
_KEY_ESC = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_STR_ESC = str.maketrans({'"': r"\"", "\\": r"\\"})


def _fmt_field(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)
    return '"' + value.translate(_STR_ESC) + '"'


def to_line(record: Record) -> str:
    """One line of InfluxDB line protocol (ns timestamp), tags sorted by key."""
    head = record.measurement.translate(_MEAS_ESC)
    tags = "".join(
        f",{k.translate(_KEY_ESC)}={record.tags[k].translate(_KEY_ESC)}"
        for k in sorted(record.tags)
    )
    fields = ",".join(f"{k.translate(_KEY_ESC)}={_fmt_field(v)}" for k, v in record.fields.items())
    return f"{head}{tags} {fields} {record.time_ns}"


def to_lines(records: Iterable[Record]) -> str:
    """Line protocol for many records, newline separated."""
    return "\n".join(to_line(r) for r in records)


def _split_unescaped(text: str, sep: str, quotes: bool = True) -> list[str]:
    """Split at ``sep`` not preceded by a backslash (and, if ``quotes``, not inside quotes)."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            cur.append(c)
            cur.append(text[i + 1])
            i += 2
            continue
        if c == '"' and quotes:
            quoted = not quoted
        elif c == sep and not quoted:
            out.append("".join(cur))
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    if quoted:
        raise LineProtocolError("unterminated string field")
    out.append("".join(cur))
    return out


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text) if "\\" in text else text


def _parse_value(raw: str, key: str) -> FieldValue:
    if not raw:
        raise LineProtocolError(f"field {key!r} has no value")
    last = raw[-1]
    if raw[0] == '"':
        if len(raw) < 2 or last != '"':
            raise LineProtocolError(f"field {key!r}: bad string {raw!r}")
        return re.sub(r"\\([\"\\])", r"\1", raw[1:-1])
    if last == "i":
        if _INT_RE.match(raw) is None:
            raise LineProtocolError(f"field {key!r}: bad integer {raw!r}")
        return int(raw[:-1])
    if raw in ("t", "T", "true", "True", "TRUE"):
        return True
    if raw in ("f", "F", "false", "False", "FALSE"):
        return False
    if _FLOAT_RE.match(raw) is None:
        kind = "non-finite" if raw.lstrip("+-").lower() in ("inf", "infinity", "nan") else "bad"
        raise LineProtocolError(f"field {key!r}: {kind} value {raw!r}")
    return float(raw)


def parse_line(line: str) -> Record:
    """Parse one line of line protocol (timestamp required, ns) into an unvalidated Record."""
    parts = _split_slow(line) if ("\\" in line or '"' in line) else line.split(" ")
    if len(parts) != 3:
        raise LineProtocolError(
            f"expected 'measurement,tags fields timestamp', got {len(parts)} space-separated parts"
        )
    series, field_text, ts = parts
    simple = "\\" not in series
    head = series.split(",") if simple else _split_unescaped(series, ",", quotes=False)
    measurement = _unescape(head[0])
    if not measurement:
        raise LineProtocolError("empty measurement name")
    tags: dict[str, str] = {}
    for item in head[1:]:
        k, eq, v = item.partition("=") if simple else _partition_unescaped(item)
        if not eq or not k or not v:
            raise LineProtocolError(f"bad tag {item!r}")
        tags[_unescape(k)] = _unescape(v)
    fields: dict[str, FieldValue] = {}
    items = (
        field_text.split(",")
        if ("\\" not in field_text and '"' not in field_text)
        else _split_unescaped(field_text, ",")
    )
    for item in items:
        k, eq, v = item.partition("=") if "\\" not in item else _partition_unescaped(item)
        if not eq or not k:
            raise LineProtocolError(f"bad field {item!r}")
        key = _unescape(k)
        fields[key] = _parse_value(v, key)
    if not (ts.isascii() and ts.isdigit()):
        raise LineProtocolError(f"bad timestamp {ts!r} (ns integer required)")
    time_ns = int(ts)
    return Record(measurement, tags, fields, time_ns)


def _split_slow(line: str) -> list[str]:
    """Split a line with escapes or quotes into series, fields and timestamp text."""
    n = len(line)
    i = 0
    while i < n and line[i] != " ":
        i += 2 if line[i] == "\\" else 1
    if i >= n:
        return [line]
    j = i + 1
    quoted = False
    while j < n:
        c = line[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == " " and not quoted:
            break
        j += 1
    if quoted:
        raise LineProtocolError("unterminated string field")
    if j >= n:
        return [line[:i], line[i + 1 :]]
    return [line[:i], line[i + 1 : j], *line[j + 1 :].split(" ")]


def _partition_unescaped(item: str) -> tuple[str, str, str]:
    i = 0
    while i < len(item):
        if item[i] == "\\":
            i += 2
            continue
        if item[i] == "=":
            return item[:i], "=", item[i + 1 :]
        i += 1
    return item, "", ""


def parse_lines(text: str) -> list[Record]:
    """Parse and schema-validate a multi-line payload; errors name the 1-based line number."""
    out: list[Record] = []
    for no, line in enumerate(text.split("\n"), start=1):
        if not line or line.startswith("#"):
            continue
        try:
            out.append(validate(parse_line(line)))
        except (LineProtocolError, SchemaError) as exc:
            raise LineProtocolError(f"line {no}: {exc}") from None
    return out


# -- topics ---------------------------------------------------------------------------------

TOPIC_ROOT = "qnet/v1"


def telemetry_topic(node: str, measurement: str) -> str:
    """``qnet/v1/<node>/telemetry/<measurement>``: where a node's records are published."""
    return f"{TOPIC_ROOT}/{node}/telemetry/{measurement}"


def status_topic(node: str) -> str:
    """``qnet/v1/<node>/status``: retained birth/death (online/offline) of a node's publisher."""
    return f"{TOPIC_ROOT}/{node}/status"


def command_topic(node: str, command: str) -> str:
    """``qnet/v1/<node>/cmd/<command>``: commands to a node (operators only may publish)."""
    return f"{TOPIC_ROOT}/{node}/cmd/{command}"


def reply_topic(node: str, command: str) -> str:
    """``qnet/v1/<node>/reply/<command>``: a node's replies to commands."""
    return f"{TOPIC_ROOT}/{node}/reply/{command}"


def parse_telemetry_topic(topic: str) -> tuple[str, str]:
    """``(node, measurement)`` of a telemetry topic; raises ValueError for any other topic."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT or parts[3] != "telemetry":
        raise ValueError(
            f"not a telemetry topic: {topic!r} (want {TOPIC_ROOT}/<node>/telemetry/<m>)"
        )
    return parts[2], parts[4]


#: A node (or link) name: an MQTT topic level, a telemetry tag and the node's MQTT username.
NODE_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


def check_node_name(node: str) -> str:
    """``node`` if it matches :data:`NODE_NAME_PATTERN`; else SchemaError saying what is allowed."""
    if not re.fullmatch(NODE_NAME_PATTERN, node):
        raise SchemaError(
            f"bad node name {node!r}: use 1-64 letters, digits, '_' or '-' (it is an MQTT "
            "topic level: no '.', '/', '+', '#' or spaces)"
        )
    return node


# -- fast validation of incoming payloads (the bridge's hot path) ----------------------------

_INT_RE = re.compile(r"-?\d+i\Z")
_FLOAT_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\Z")
_BOOLS = frozenset(("t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE"))


class PayloadChecker:
    """Validate line-protocol payloads against the schema without building records.

    The series part of a line (measurement and tags) is checked in full the first time it is
    seen and remembered (up to ``max_series``); later lines of that series only get their field
    names, field value syntax per type and timestamp checked. Lines with escapes or string
    fields take the full ``parse_line`` + ``validate`` path. Same verdicts as ``parse_lines``.
    """

    def __init__(self, max_series: int = 100_000) -> None:
        self.max_series = max_series
        self._series: dict[str, tuple[str, str]] = {}

    def check(self, text: str, measurement: str, node: str) -> int:
        """Number of points in ``text``; raise LineProtocolError (with line number) if any is bad.

        Every point must be of ``measurement`` and carry ``node=<node>``.
        """
        n = 0
        for no, line in enumerate(text.split("\n"), start=1):
            if not line or line[0] == "#":
                continue
            try:
                if "\\" in line or '"' in line:
                    rec = validate(parse_line(line))
                    got = (rec.measurement, rec.tags["node"])
                else:
                    got = self._fast(line)
            except (LineProtocolError, SchemaError) as exc:
                raise LineProtocolError(f"line {no}: {exc}") from None
            if got[0] != measurement or got[1] != node:
                raise LineProtocolError(
                    f"line {no}: {got[0]!r} of node {got[1]!r} does not belong on "
                    f"{measurement!r} of node {node!r}"
                )
            n += 1
        return n

    def _fast(self, line: str) -> tuple[str, str]:
        parts = line.split(" ")
        if len(parts) != 3:
            raise LineProtocolError(
                f"expected 'measurement,tags fields timestamp', got {len(parts)} parts"
            )
        series, field_text, ts = parts
        hit = self._series.get(series)
        if hit is None:
            rec = validate(parse_line(line))
            hit = (rec.measurement, rec.tags["node"])
            if len(self._series) < self.max_series:
                self._series[series] = hit
            return hit
        meas = MEASUREMENTS[hit[0]]
        types = meas.fields
        if not (ts.isascii() and ts.isdigit()) or (len(ts) >= 19 and int(ts) >= 2**63):
            raise LineProtocolError(f"bad timestamp {ts!r} (ns integer required)")
        keys: set[str] = set()
        for item in field_text.split(","):
            key, eq, value = item.partition("=")
            want = types.get(key)
            if want is None or not eq:
                raise SchemaError(f"measurement {hit[0]!r}: bad or unknown field {item!r}")
            if want is float:
                ok = _FLOAT_RE.match(value) is not None
            elif want is int:
                ok = _INT_RE.match(value) is not None and (
                    len(value) < 20 or -(2**63) <= int(value[:-1]) < 2**63
                )
            elif want is bool:
                ok = value in _BOOLS
            else:
                ok = False  # string fields are quoted, so they never reach this path
            if not ok:
                raise SchemaError(
                    f"measurement {hit[0]!r}: field {key!r} must be {want.__name__}, got {value!r}"
                )
            keys.add(key)
        if not keys.issuperset(meas.required_fields):
            raise SchemaError(f"measurement {hit[0]!r}: missing required field")
        return hit
