"""The daemon's config: the node config (instruments) plus a ``daemon:`` section.

One YAML file per node. It either lists its ``instruments`` itself or names a
node config to take them from (``node_config: sim-node.yaml``, relative to the
file; its own ``instruments`` entries are added on top). Example::

    node: alice
    instruments: {...}                 # as in controller.config (drivers, limits)
    daemon:
      link: alice-bob
      acquisition:
        source: {kind: taggers, taggers: [{device: time_tagger, channel_offset: 0}]}
        n_channels: 8
        window_s: 1.0
        coincidence_window_ps: 1000
        roles: {alice: {H: 0, V: 1, D: 2, A: 3}, bob: {H: 4, V: 5, D: 6, A: 7}}
      calibration: {at_start: true, capture_s: 1.0, max_delay_ps: 50000000}
      monitor: {snspd_bias: [latched], pump_laser: [tec_temperature_c]}
      interlocks: {count_rate: {reading: max_singles_rate_hz, trip_above: 2.0e7, ...}}
      compensation: {device: polarization_controller, target_qber: 0.03}
      safe_state: [{device: pump_laser, setting: laser_on, value: false}]
      telemetry: {broker: {host: 127.0.0.1, port: 1883, client_id: qnet-alice}}
      permissions: {default_role: viewer, users: {op: {role: operator}}}

Validated whole at start: an error names the file, the key path and what was
expected, and nothing starts half-configured. Beyond the schema, every reference is
checked against the instruments' command surfaces (:meth:`DaemonConfig.problems`):
monitored and interlock readings exist, and each interlock, ``on_clear`` and
``safe_state`` action passes the same validation it gets when it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from coincidence import CoincidenceError, RoleMap
from configfile import YamlDoc
from telemetry import NODE_NAME_PATTERN, BrokerSettings, OutboxSettings

from .acquisition import WINDOW_READINGS
from .commands import (
    DAEMON,
    CommandError,
    DeviceSurface,
    PermissionsConfig,
    element_settings,
    surface_for,
    validate_request,
)
from .compensation import CompensationSettings
from .config import (
    ConfigError,
    InstrumentConfig,
    NodeConfig,
    Problem,
    read_config,
    secret_file_problems,
    validation_problems,
)
from .interlocks import ActionSpec, InterlockRule
from .qkd_link._service import QkdLinkConfig

#: What the daemon calls on a tagger named in ``acquisition.source.taggers``.
_TAGGER_METHODS = ("set_streaming", "tag_source")
#: Daemon actions that need a section of the daemon config (else refused when run).
_DAEMON_ACTION_NEEDS = {"compensate": "compensation", "calibrate": "acquisition"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaggerSpec(_Section):
    """One time tagger feeding the acquisition: its channel ``k`` becomes ``channel_offset + k``."""

    device: str
    channel_offset: int = Field(0, ge=0, le=255)
    clock_offset_ps: int = Field(
        0, description="this tagger's clock minus the reference clock, subtracted from its times"
    )


class TaggersSource(_Section):
    """Tags from the node's time-tagger instruments (merged in time order)."""

    kind: Literal["taggers"] = "taggers"
    taggers: list[TaggerSpec] = Field(min_length=1)


class TestbedSource(_Section):
    """Tags from an in-process emulated testbed (demo, benchmarks)."""

    kind: Literal["testbed"] = "testbed"
    config: str = Field(description="testbed YAML, relative to this file")
    speed: float = Field(1.0, ge=0.0, description="simulated s per wall s (0 = unpaced)")
    serve: bool = Field(True, description="also serve the emulated instruments")


class AcquisitionConfig(_Section):
    """Windows, coincidence window, channel roles and key-rate settings."""

    source: TaggersSource | TestbedSource = Field(discriminator="kind")
    n_channels: int = Field(8, ge=1, le=256)
    window_s: float = Field(1.0, gt=0.0, le=60.0)
    coincidence_window_ps: int = Field(1000, gt=0)
    roles: dict[str, Any]
    min_sifted: int = Field(100, ge=1, description="sifted counts needed to trust a QBER")
    f_ec: float = Field(1.16, ge=1.0)
    key_basis: Literal["Z", "X", "both"] = "Z"
    delays_ps: list[int] | None = None
    read_timeout_s: float = Field(0.5, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> AcquisitionConfig:
        try:
            roles = RoleMap.from_dict(self.roles)
        except CoincidenceError as exc:
            raise ValueError(f"roles: {exc}") from None
        if roles.max_channel >= self.n_channels:
            raise ValueError(
                f"roles use channel {roles.max_channel}, but n_channels is {self.n_channels}"
            )
        if self.delays_ps is not None and len(self.delays_ps) != self.n_channels:
            raise ValueError(f"delays_ps needs {self.n_channels} entries")
        return self

    def role_map(self) -> RoleMap:
        """The roles as a ``RoleMap``."""
        return RoleMap.from_dict(self.roles)


class CalibrationConfig(_Section):
    """Delay finding at start / on command, and drift tracking while running."""

    at_start: bool = True
    capture_s: float = Field(1.0, gt=0.0, le=60.0)
    max_delay_ps: int = Field(50_000_000, gt=0)
    resolution_ps: int = Field(20, gt=0)
    min_significance: float = Field(6.0, gt=0.0)
    track: bool = True
    track_every: int = Field(5, ge=1, description="windows between drift checks")
    track_max_shift_ps: int = Field(2000, gt=0)
    clock_drift: bool = Field(
        True,
        description="with two taggers, fit the second's clock (offset + ppm drift) at "
        "calibration, map its drift away and follow it while running (the second tagger "
        "must hold Bob's channels; the constant offset stays in the channel delays)",
    )


class CompensationConfig(CompensationSettings):
    """Which controller compensates, and when (settings of the optimizer inherited)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str
    auto: bool = Field(True, description="start when the QBER interlock trips")
    settle_windows: int = Field(1, ge=1, description="windows to wait after each move")
    window_s: float | None = Field(None, gt=0.0, description="measurement time per point")


class TelemetryConfig(_Section):
    """Broker (None: the demo starts an embedded one) and the outbox."""

    broker: BrokerSettings | None = None
    outbox: OutboxSettings | None = None
    max_lines_per_message: int = Field(
        500,
        ge=1,
        le=100_000,  # PublisherSettings' bound, so that --check catches a value it refuses
        description="records per MQTT message",
    )


class DaemonSection(_Section):
    """Everything the daemon adds to the node config."""

    link: str = Field("link", pattern=NODE_NAME_PATTERN)
    acquisition: AcquisitionConfig | None = Field(
        None, description="tag analysis; None for a node that only runs instruments"
    )
    calibration: CalibrationConfig = CalibrationConfig()
    monitor: dict[str, list[str]] = Field(default_factory=dict)
    interlocks: dict[str, InterlockRule] = Field(default_factory=dict)
    compensation: CompensationConfig | None = None
    qkd_link: QkdLinkConfig | None = Field(
        None, description="this node's side of the QKD link engine (controller.qkd_link)"
    )
    safe_state: list[ActionSpec] = Field(default_factory=list)
    telemetry: TelemetryConfig = TelemetryConfig()
    permissions: PermissionsConfig = PermissionsConfig()
    shutdown_timeout_s: float = Field(5.0, gt=0.0, le=60.0)


class DaemonConfig(NodeConfig):
    """A node config with its daemon section (``node_config`` may supply the instruments)."""

    model_config = ConfigDict(extra="forbid")

    node_config: str | None = None
    daemon: DaemonSection
    _base_dir: str = PrivateAttr(".")
    _lines: dict[tuple[str, ...], int] = PrivateAttr(default_factory=dict)

    def line_of(self, key: str) -> int | None:
        """Line of the dotted key path in the config file (set by the loader), if known."""
        parts = tuple(key.split("."))
        while parts:
            if parts in self._lines:
                return self._lines[parts]
            parts = parts[:-1]
        return None

    def problems(self) -> list[tuple[str, str]]:
        """Everything the daemon would trip over only when running, as (key path, what).

        Checked against each instrument's command surface, built as the daemon builds it
        (:func:`instrument_surface`): the taggers, the monitored readings, each interlock's
        reading (a window reading or a monitored ``device.key``), and every interlock,
        ``on_clear`` and ``safe_state`` action through the operator-command validation with
        the ``system`` role. Otherwise a misspelt setting or an out-of-range value would only
        fail at a trip or at shutdown, and a misspelt reading would never trip at all.
        """
        from drivers import DRIVERS

        d = self.daemon
        out: list[tuple[str, str]] = []
        surfaces = {n: instrument_surface(n, ic) for n, ic in self.instruments.items()}
        known = ", ".join(sorted(surfaces)) or "none"

        def no_instrument(name: str) -> str:
            return f"no instrument {name!r} (instruments: {known})"

        acq = d.acquisition
        if acq is None and d.compensation is not None:
            out.append(("daemon.compensation", "needs daemon.acquisition (QBER is its cost)"))
        if acq is not None and isinstance(acq.source, TaggersSource):
            for k, t in enumerate(acq.source.taggers):
                where = f"daemon.acquisition.source.taggers.{k}.device"
                ic = self.instruments.get(t.device)
                if ic is None:
                    out.append((where, no_instrument(t.device)))
                elif not all(hasattr(DRIVERS[ic.driver], a) for a in _TAGGER_METHODS):
                    model = surfaces[t.device].model
                    out.append((where, f"{t.device!r} ({model}) is not a time tagger"))
        readings = set(WINDOW_READINGS) if acq is not None else set()
        for dev, keys in d.monitor.items():
            surf = surfaces.get(dev)
            if surf is None:
                out.append((f"daemon.monitor.{dev}", no_instrument(dev)))
                continue
            names = {*surf.readables, *surf.settings}
            for k, key in enumerate(keys):
                if key in names:
                    readings.add(f"{dev}.{key}")
                else:
                    out.append(
                        (
                            f"daemon.monitor.{dev}.{k}",
                            f"{key!r} is not a reading of {dev} ({surf.model}; readings: "
                            f"{', '.join(sorted(names))})",
                        )
                    )
        for name, rule in d.interlocks.items():
            base = f"daemon.interlocks.{name}"
            if rule.reading not in readings:
                out.append((f"{base}.reading", _unknown_reading(rule.reading, readings, surfaces)))
            for field, specs in (("actions", rule.actions), ("on_clear", rule.on_clear)):
                for k, a in enumerate(specs):
                    out += self._action_problems(f"{base}.{field}.{k}", a, surfaces, no_instrument)
        if d.compensation is not None:
            out += self._compensation_problems(d.compensation, surfaces, no_instrument)
        for k, a in enumerate(d.safe_state):
            where = f"daemon.safe_state.{k}"
            if a.device == DAEMON:  # applied with the devices only; nothing to undo in the daemon
                out.append((f"{where}.device", "the safe state sets instruments, not the daemon"))
            else:
                out += self._action_problems(where, a, surfaces, no_instrument)
        if acq is not None and isinstance(acq.source, TestbedSource):
            tb = self.base_dir() / acq.source.config
            if not tb.is_file():
                what = f"the testbed config it names does not exist ({tb})"
                out.append(("daemon.acquisition.source.config", what))
        return out

    def file_problems(self) -> list[tuple[str, str]]:
        """Secret and TLS files the config names that are missing, unreadable or empty.

        Separate from :meth:`problems` because they depend on the machine, not the config:
        ``qnet run`` (and ``--check``) verify them where the daemon runs.
        """
        return secret_file_problems(self)

    def _action_problems(
        self,
        where: str,
        action: ActionSpec,
        surfaces: dict[str, DeviceSurface],
        no_instrument: Callable[[str], str],
    ) -> list[tuple[str, str]]:
        """Why ``action`` would be refused when run (as the daemon runs it), if it would."""
        if action.device != DAEMON and action.device not in surfaces:
            return [(f"{where}.device", no_instrument(action.device))]
        body = {"id": "config-check", **action.as_request()}
        try:
            validate_request(body, surfaces, self.daemon.permissions, role="system")
        except CommandError as exc:
            return [(where, f"{exc.message} ({exc.code})")]
        if action.device == DAEMON:
            needs = _DAEMON_ACTION_NEEDS.get(str(action.action))
            if needs is not None and getattr(self.daemon, needs) is None:
                return [(where, f"daemon action {action.action!r} needs daemon.{needs}")]
        return []

    def _compensation_problems(
        self,
        comp: CompensationConfig,
        surfaces: dict[str, DeviceSurface],
        no_instrument: Callable[[str], str],
    ) -> list[tuple[str, str]]:
        """The compensation device must have elements to move, and ``elements`` must exist.

        Without this a controller with nothing to move would only be noticed when the
        compensation runs (and an index past the last element only then, as a failure).
        """
        where = "daemon.compensation.device"
        if comp.device == DAEMON:
            what = f"{comp.device!r} is not an instrument; name a polarization controller"
            return [(where, what)]
        surf = surfaces.get(comp.device)
        if surf is None:
            return [(where, no_instrument(comp.device))]
        names = element_settings(surf)
        if not names:
            return [
                (
                    where,
                    f"{comp.device!r} ({surf.model}) has no element settings to move; name a "
                    "polarization controller",
                )
            ]
        return [
            (
                "daemon.compensation.elements",
                f"index {k} is outside 0..{len(names) - 1} ({comp.device} has {', '.join(names)})",
            )
            for k in comp.elements or ()
            if k >= len(names)
        ]

    def base_dir(self) -> Path:
        """Folder relative paths in the config resolve against (set by the loader)."""
        return Path(self._base_dir)


def read_daemon_yaml(path: str | Path) -> dict[str, Any]:
    """A daemon config's mapping, with the instruments and node name of its ``node_config``.

    The daemon's own ``instruments`` entries override the node config's; ConfigError names
    the file and what was wrong (the node config's instruments are validated here).
    """
    return read_daemon_doc(Path(path)).data


def read_daemon_doc(path: str | Path) -> YamlDoc:
    """:func:`read_daemon_yaml` keeping the daemon file's key lines (for error messages)."""
    p = Path(path)
    doc = read_config(p, "config")
    data = doc.data
    ref = data.get("node_config")
    if ref is None:
        return doc
    if not isinstance(ref, str):
        what = f"expected a file name, got {ref!r}"
        raise ConfigError(Problem(what, str(p), doc.line(["node_config"]), "node_config"))
    node_path = (p.parent / ref).resolve()
    if not node_path.is_file():
        what = f"the node config {ref!r} it names does not exist ({node_path})"
        raise ConfigError(Problem(what, str(p), doc.line(["node_config"]), "node_config"))
    node_doc = read_config(node_path, "node config")
    node = node_doc.data
    merged = dict(node.get("instruments") or {})
    own = data.get("instruments") or {}
    if not isinstance(own, dict):
        what = "expected a mapping of instrument names"
        raise ConfigError(Problem(what, str(p), doc.line(["instruments"]), "instruments"))
    merged.update(own)
    data = {**data, "instruments": merged}
    data.setdefault("node", node.get("node"))
    try:
        NodeConfig.model_validate(
            {"node": data["node"], "instruments": node.get("instruments") or {}}
        )
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, node_doc, NodeConfig)) from None
    # lines of the node config's instruments, unless the daemon file overrides them
    lines = dict(doc.lines)
    return YamlDoc(p, data, lines)


def load_daemon_config(path: str | Path) -> DaemonConfig:
    """Read and validate a daemon config; ConfigError names the file, line and key path.

    One problem per line: first the schema (pydantic; an unknown key gets the nearest valid
    one suggested), then, for a config that passed it, everything
    :meth:`DaemonConfig.problems` finds against the instruments' surfaces and the files
    the config refers to (secrets, the testbed config).
    """
    p = Path(path)
    doc = read_daemon_doc(p)
    try:
        cfg = DaemonConfig.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, doc, DaemonConfig)) from None
    cfg._base_dir = str(p.parent.resolve())
    cfg._lines = dict(doc.lines)
    problems = cfg.problems()
    if problems:
        raise ConfigError(
            [Problem(" ".join(w.split()), str(p), doc.line(k.split(".")), k) for k, w in problems]
        )
    return cfg


def format_problems(path: str | Path | None, problems: list[tuple[str, str]]) -> str:
    """One line per problem: ``file: key.path: what`` (no file part when ``path`` is None)."""
    head = f"{path}: " if path is not None else ""
    return "\n".join(f"{head}{key}: {' '.join(what.split())}" for key, what in problems)


def instrument_surface(name: str, ic: InstrumentConfig) -> DeviceSurface:
    """The command surface of one configured instrument, as the daemon serves it.

    The driver's default safe limits overlaid by the configured ``limits``: the same
    ranges the built instrument enforces (``Instrument.limits``).
    """
    from drivers import DRIVERS

    return surface_for(name, DRIVERS[ic.driver], ic.effective_limits())


def _unknown_reading(reading: str, provided: set[str], surfaces: dict[str, DeviceSurface]) -> str:
    """Why an interlock's ``reading`` never arrives, and what would."""
    dev, _, key = reading.partition(".")
    surf = surfaces.get(dev)
    if reading in WINDOW_READINGS:
        return f"{reading!r} is a window reading, but there is no daemon.acquisition"
    if surf is not None and key in {*surf.readables, *surf.settings}:
        return f"{reading!r} is not polled: add {key!r} to daemon.monitor.{dev}"
    return (
        f"{reading!r} is not a reading the daemon provides (provided: "
        f"{', '.join(sorted(provided)) or 'none'}; a device reading needs daemon.monitor)"
    )
