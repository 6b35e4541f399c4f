"""The emulated entanglement-distribution testbed: physics + emulated instruments + tag stream.

A :class:`Testbed` owns the physics state (fiber unitary, detector latches)
and a simulated clock. The operator's controls live in the instrument
emulators of :mod:`drivers.sim.instruments` (laser current and output, SMU
bias, liquid-crystal voltages, ...): the testbed reads them before every
generator step, and injects physics-derived readings (pump power, SMU voltage,
SPAD count rate, the time tagger's stream) into them as callables. So the
same emulators answer the real drivers over loopback sockets (:meth:`serve`),
and tests may drive them in-process through ``emulator.handle(line)``.

Roles (``instruments`` in the testbed config, merged over the node config):
the laser's current and output set the pump power; each SMU biases the SNSPDs
on its ``channels`` (its own latch logic, at the detectors' critical current, is
the latch state: over-bias latches, bias to 0 and back resets) and reads their
voltage; the power meter reads ``tap_fraction`` of the pump; a SPAD module
reports its channel's rate (dead time included) and gates it with ``REG:RUN``;
the liquid-crystal controller's four voltages set Bob's compensating unitary
(``physics.CompensatorParams``); a time controller streams Alice's (0..3) or
Bob's (4..7) channels, in Bob's own clock in ``two_taggers`` mode.

Time: the generator advances in steps of ``step_s`` simulated seconds; between
steps the state updates (controls re-read, fiber random walk). Tags come out
through :class:`TestbedTagSource` (in-process, as fast as asked or paced to
``speed`` x real time) and through the emulated time taggers' streams.
The same config, seed and sequence of actions at the same simulated times give
the same tags (in-process, unpaced); served and paced runs tie actions to the
wall clock, so they are repeatable only statistically.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from coincidence import TagBatch
from configfile import ConfigFileError, load_mapping

from .._resources import socket_address
from .._tagsource import TagSource
from . import physics as ph
from .clocks import TaggerClock, common_shift_ps
from .instruments import (
    EMULATORS,
    CLD1015Emulator,
    D3050Emulator,
    ID120Emulator,
    ID1000Emulator,
    Keithley2400Emulator,
    PM100Emulator,
)
from .server import FAULT_MODES, FaultConfig, InstrumentServer
from .sitelink import SiteDownlink, SiteLinkError, SiteUplink
from .tags import TagGenerator

_log = logging.getLogger("qnet.sim")

Side = Literal["both", "alice", "bob"]
Site = Literal["alice", "bob"]

#: The site of an instrument whose config does not say: the source (pump laser and its
#: power-meter tap) is at Alice's, the polarization controller in Bob's arm.
_DRIVER_SITE: dict[str, Site] = {
    "thorlabs_cld1015": "alice",
    "thorlabs_pm100": "alice",
    "meadowlark_d3050": "bob",
}

#: Channels an instrument acts on when the testbed config does not say: the SMU biases
#: Alice's H detector, the SPAD module reports Bob's H detector.
_DEFAULT_CHANNELS: dict[str, tuple[int, ...]] = {"keithley_2400": (0,), "idq_id120": (4,)}


class TestbedError(ValueError):
    """The testbed config or a run-time request is invalid (the message says where)."""

    __test__ = False  # not a pytest test class


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InstrumentSpec(_Model):
    """One served instrument: driver key, address and its role in the physics."""

    driver: str
    resource: str = ""
    """``TCPIP::127.0.0.1::PORT::SOCKET`` or ``socket://127.0.0.1:PORT``; empty = not served."""
    stream_port: int | None = None
    """Tag-stream port (time taggers)."""
    channels: list[int] = Field(default_factory=list)
    """Testbed channels (0..7) the instrument acts on: SMU bias -> these SNSPDs, SPAD module
    -> the channel whose rate it reports, time tagger -> its inputs (0..3 Alice, 4..7 Bob)."""
    tap_fraction: float = Field(0.01, ge=0.0, le=1.0)
    """Power meter: fraction of the pump power that reaches it."""
    site: Site | None = None
    """The site whose ``qnet sim --site`` process serves it (default: from its channels;
    the laser and power meter at Alice's, the polarization controller at Bob's)."""


class InitialState(_Model):
    """Operator settings at start (written into the emulators)."""

    laser_current_a: float = Field(0.0, ge=0.0)
    laser_on: bool = False
    bias_current_a: float | None = None
    """SMU bias at start (default: the detectors' ``default_bias_a``); outputs on."""
    compensator_voltages_v: list[float] | None = None
    """Polarization controller voltages (default: identity, each element a full wave)."""
    fiber_rotation_rad: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Initial rotation vector of Bob's fiber (Poincare sphere, rad)."""


class TestbedConfig(_Model):
    """The testbed: physics, seed, pacing, the node config it serves, fault injection."""

    __test__ = False  # not a pytest test class

    seed: int = 0
    node_config: str | None = None
    """Node config (path relative to this file) listing the instruments and their addresses."""
    step_s: float = Field(0.01, gt=0.0, le=1.0)
    """Simulated time per generator step; controls are re-read between steps."""
    speed: float = Field(1.0, ge=0.0)
    """Simulated seconds per wall-clock second for paced streams; 0 = as fast as asked
    (in-process readers; the background clock and served streams then run at 1, see
    ``Testbed.clock_speed``)."""
    chunk_s: float = Field(0.01, gt=0.0)
    """Simulated time per unpaced ``read`` and per served stream frame (at speed 1)."""
    physics: ph.PhysicsParams = ph.PhysicsParams()
    initial: InitialState = InitialState()
    instruments: dict[str, InstrumentSpec] = Field(default_factory=dict)
    faults: dict[str, str] = Field(default_factory=dict)
    """Instrument name -> fault mode at start (timeout, garbage, late or disconnect)."""
    site_link: str = ""
    """``tcp://127.0.0.1:PORT``: where the Alice-site process (``qnet sim --site alice``)
    hands Bob's photons to the Bob-site process (two_taggers mode only)."""

    @field_validator("faults")
    @classmethod
    def _check_faults(cls, faults: dict[str, str]) -> dict[str, str]:
        for name, mode in faults.items():
            if mode not in FAULT_MODES:
                raise ValueError(f"faults.{name}: mode {mode!r} is not one of {FAULT_MODES}")
        return faults

    @classmethod
    def load(cls, path: str | Path) -> TestbedConfig:
        """Read a testbed YAML file and, if it names one, merge in its node config."""
        p = Path(path)
        try:
            doc = load_mapping(p, "testbed config")
        except ConfigFileError as exc:
            raise TestbedError(str(exc)) from None
        raw = doc.data
        node = raw.get("node_config")
        if node:
            # one node config, or a list of them (one per site of a two-site testbed)
            names = node if isinstance(node, list) else [node]
            listed: dict[str, dict[str, Any]] = {}
            for k, one in enumerate(names):
                node_path = (p.parent / str(one)).resolve()
                if not node_path.is_file():
                    where = ["node_config", k] if isinstance(node, list) else ["node_config"]
                    raise TestbedError(
                        f"{doc.where(where)}: node_config: the node config {str(one)!r} "
                        f"it names does not exist ({node_path})"
                    )
                for name, entry in _instruments_from_node_config(node_path).items():
                    if name in listed:
                        raise TestbedError(
                            f"{doc.where(['node_config'])}: node_config: instrument {name!r} "
                            f"is listed by more than one node config ({node_path})"
                        )
                    listed[name] = entry
            raw["instruments"] = _merge_instruments(listed, raw.get("instruments") or {})
            raw["node_config"] = ", ".join(str(x) for x in names)
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            lines = [
                f"{doc.where(e['loc'])}: {'.'.join(str(x) for x in e['loc']) or 'top level'}: "
                f"{e['msg']}"
                for e in exc.errors()
            ]
            raise TestbedError("\n".join(lines)) from exc


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    """A YAML mapping (empty file: empty mapping); TestbedError names the file and the fault."""
    try:
        return load_mapping(path, what).data
    except ConfigFileError as exc:
        raise TestbedError(str(exc)) from None


def _instruments_from_node_config(path: Path) -> dict[str, dict[str, Any]]:
    """The instruments a node config lists: name -> {driver, resource, stream_port}."""
    items = _read_yaml(path, "node config").get("instruments")
    if isinstance(items, list):
        items = {str(d.get("name")): d for d in items if isinstance(d, dict)}
    if not isinstance(items, dict):
        raise TestbedError(f"{path}: expected an 'instruments' mapping or list")
    out: dict[str, dict[str, Any]] = {}
    for name, d in items.items():
        if not isinstance(d, dict) or "driver" not in d:
            raise TestbedError(f"{path}: instrument {name!r} has no 'driver'")
        opts = d.get("options") or {}
        entry: dict[str, Any] = {"driver": d["driver"], "resource": d.get("resource", "")}
        if opts.get("stream_port") is not None:
            entry["stream_port"] = int(opts["stream_port"])
        out[str(name)] = entry
    return out


def _merge_instruments(
    node: dict[str, dict[str, Any]], local: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    out = {k: dict(v) for k, v in node.items()}
    for name, extra in local.items():
        out.setdefault(name, {}).update(extra or {})
    return out


_MASK64 = (1 << 64) - 1


def _step_seed(seed: int, k: int) -> int:
    """A well-mixed 63-bit seed for step ``k`` (splitmix64 of seed and step)."""
    z = ((seed & _MASK64) * 0x9E3779B97F4A7C15 + (k + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


class _Subscriber:
    """A reader's queue of batches; an unread backlog beyond ``max_tags`` overflows.

    Like a real tagger's buffer overflow, the oldest batches then lose their
    tags but keep their interval, so the stream stays contiguous.
    """

    max_tags = 4_000_000

    def __init__(self, side: Side) -> None:
        self.side = side
        self.queue: deque[TagBatch] = deque()
        self.n_tags = 0
        self.overflowed_tags = 0

    def push(self, batch: TagBatch) -> None:
        self.queue.append(batch)
        self.n_tags += len(batch)
        k = 0
        while self.n_tags > self.max_tags and k < len(self.queue) - 1:
            old = self.queue[k]
            if len(old):
                self.n_tags -= len(old)
                self.overflowed_tags += len(old)
                self.queue[k] = TagBatch.empty(old.begin_ps, old.end_ps)
            k += 1

    def drain(self) -> list[TagBatch]:
        parts = list(self.queue)
        self.queue.clear()
        self.n_tags = 0
        return parts


class Testbed:
    """The emulated two-node link: physics state, simulated clock, emulators, servers.

    Args:
        config: a :class:`TestbedConfig`.

    Channels of the generator: Alice H, V, D, A = 0..3, Bob H, V, D, A = 4..7.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, config: TestbedConfig) -> None:
        self.config = config
        self.params = config.physics
        p = self.params
        self._lock = threading.RLock()
        self._subs: list[_Subscriber] = []
        self._servers: dict[str, InstrumentServer] = {}
        self._role_cache: dict[str, list[tuple[str, InstrumentSpec]]] = {}
        self._clock_thread: threading.Thread | None = None
        self._clock_stop = threading.Event()
        self._tagger_subs: dict[str, _Subscriber] = {}
        self.step_ps = round(config.step_s * 1e12)
        self._step_index = 0
        self._walk_rng = np.random.default_rng([config.seed & 0xFFFFFFFF, 7])
        self._counts_rng = np.random.default_rng([config.seed & 0xFFFFFFFF, 11])
        self._cache_key: tuple = ()
        self._cache: tuple = ()
        self._comp_key: tuple = ()
        self._comp_u = np.eye(2, dtype=complex)
        # physics state
        self.u_fiber = ph.rotation(config.initial.fiber_rotation_rad)
        self.drift_rad_per_sqrt_s = p.bob.drift_rad_per_sqrt_s
        self._latched = np.zeros(8, bool)
        self._bias = np.array(
            [p.alice_detectors.default_bias_a] * 4 + [p.bob_detectors.default_bias_a] * 4
        )
        det = [p.alice_detectors] * 4 + [p.bob_detectors] * 4
        self._det = det
        self.generator = TagGenerator(
            ph.channel_delays_ps(p),
            np.array([d.jitter_ps for d in det]),
            np.array([d.dead_time_ps for d in det]),
            np.array([d.afterpulse_probability for d in det]),
            np.array([d.afterpulse_delay_ps for d in det]),
        )
        # the taggers' clocks (used in two_taggers mode), one common shift keeps readings >= 0
        clocks = p.clocks
        sites = (clocks.site("alice"), clocks.site("bob"))
        self.clock_shift_ps = common_shift_ps(list(sites), self.step_ps)
        self.clocks: dict[str, TaggerClock] = {
            side: TaggerClock(site, self.clock_shift_ps, self.step_ps, config.seed * 2 + k)
            for k, (side, site) in enumerate(zip(("alice", "bob"), sites, strict=True))
        }
        self._view_end: dict[str, tuple[int, int]] = {}
        self._uplink: SiteUplink | None = None
        self._downlink: SiteDownlink | None = None
        self.emulators: dict[str, Any] = {}
        self._build_emulators()

    # -- emulators ------------------------------------------------------------------------
    def _roles(self, driver: str) -> list[tuple[str, InstrumentSpec]]:
        """The configured instruments of one driver type (cached: the config is fixed)."""
        roles = self._role_cache.get(driver)
        if roles is None:
            roles = [(n, s) for n, s in self.config.instruments.items() if s.driver == driver]
            self._role_cache[driver] = roles
        return roles

    def _build_emulators(self) -> None:
        init = self.config.initial
        for name, spec in self.config.instruments.items():
            if spec.driver not in EMULATORS:
                raise TestbedError(
                    f"instrument {name!r}: no emulator for driver {spec.driver!r} "
                    f"(known: {', '.join(sorted(EMULATORS))})"
                )
            for c in spec.channels:
                if not 0 <= c < 8:
                    raise TestbedError(f"instrument {name!r}: channel {c} is not in 0..7")
            if not spec.channels and spec.driver in _DEFAULT_CHANNELS:
                spec.channels = list(_DEFAULT_CHANNELS[spec.driver])
            self.emulators[name] = self._make_emulator(name, spec)
            # its own serial, the same at every start of this bench (config order)
            self.emulators[name].serial = len(self.emulators)
        if not self._roles("thorlabs_cld1015"):
            # no served laser: an in-process one still holds the pump settings
            self.emulators["_pump"] = CLD1015Emulator()
        laser = self.laser
        laser.current_setpoint_a = init.laser_current_a
        laser.output_on = init.laser_on
        if self.compensator is not None and init.compensator_voltages_v is not None:
            self.set_compensator_voltages(init.compensator_voltages_v)
        elif self.compensator is not None:
            self.set_compensator_voltages(
                ph.compensator_voltages(np.eye(2), self.params.compensator)
            )
        for name, spec in self._roles("keithley_2400"):
            smu = self.emulators[name]
            det = self._det[spec.channels[0]] if spec.channels else self._det[0]
            smu.bias_current_a = (
                init.bias_current_a if init.bias_current_a is not None else det.default_bias_a
            )
            smu.output_on = True
        for name, spec in self._roles("idq_id120"):
            c = spec.channels[0] if spec.channels else 0
            self.emulators[name].dead_time_s = self._det[c].dead_time_ps * 1e-12

    def _make_emulator(self, name: str, spec: InstrumentSpec) -> Any:
        """The emulator of one configured instrument, wired to the physics where it reads it."""
        d = spec.driver
        if d == "keithley_2400":
            det = self._det[spec.channels[0]] if spec.channels else self._det[0]
            emu = Keithley2400Emulator(
                read_voltage_v=lambda bias, latched, det=det: ph.snspd_voltage_v(
                    bias, latched, det
                ),
                critical_current_a=det.critical_current_a,
                next_latched=lambda latched, bias, det=det: ph.next_latched(latched, bias, det),
            )
            return emu
        if d == "thorlabs_pm100":
            return PM100Emulator(
                read_power_w=lambda spec=spec: self.pump_power_w() * spec.tap_fraction
            )
        if d == "idq_id120":
            chans = list(spec.channels) or [0]
            return ID120Emulator(read_count_rate_hz=lambda c=chans, n=name: self._spad_rate(n, c))
        if d == "idq_id1000":
            side = self._tagger_side(name, spec)
            chans = [0, 1, 2, 3] if side == "alice" else [4, 5, 6, 7]
            return ID1000Emulator(
                tag_supplier=lambda duration_ps, n=name, s=side: self._supply(n, s, duration_ps),
                read_counts=lambda c=chans: self._counts_per_second(c),
                frame_duration_ps=max(1, round(self.config.chunk_s * self.clock_speed * 1e12)),
            )
        # The laser and the polarization controller hold operator settings the testbed
        # reads (see laser / compensator); they need no physics callables.
        return EMULATORS[d]()

    def _tagger_side(self, name: str, spec: InstrumentSpec) -> Side:
        chans = sorted(spec.channels) if spec.channels else None
        if chans is None:
            lowered = name.lower()
            return "bob" if "bob" in lowered else "alice"
        if chans == [0, 1, 2, 3]:
            return "alice"
        if chans == [4, 5, 6, 7]:
            return "bob"
        raise TestbedError(
            f"instrument {name!r}: a time tagger takes channels [0, 1, 2, 3] (Alice) or "
            f"[4, 5, 6, 7] (Bob), got {spec.channels}"
        )

    @property
    def laser(self) -> CLD1015Emulator:
        """The pump laser's emulator (served or in-process)."""
        return self.emulators[self._laser_name]

    @property
    def _laser_name(self) -> str:
        """Name of the pump laser's emulator (``_pump`` when no laser is served)."""
        names = [n for n, _ in self._roles("thorlabs_cld1015")] or ["_pump"]
        return names[0]

    @property
    def compensator(self) -> D3050Emulator | None:
        """The polarization controller's emulator, if the node has one."""
        names = [n for n, _ in self._roles("meadowlark_d3050")]
        return self.emulators[names[0]] if names else None

    # -- controls, as an operator would set them (through the emulators' command lines) ------
    @staticmethod
    def _scpi_set(name: str, emulator: Any, command: str, what: str) -> None:
        """Send one set command to a SCPI emulator; TestbedError if the emulator refused it.

        The command runs against an empty error queue, so a refusal raises here (``what``
        says what was asked) instead of sitting in the queue until the operator's next,
        unrelated driver command reads ``SYST:ERR?``; errors already queued stay queued.
        """
        with emulator.lock:
            pending = emulator.errors
            emulator.errors = deque(maxlen=pending.maxlen)
            try:
                emulator.handle(command)
                refused = list(emulator.errors)
            finally:
                emulator.errors = pending
        if refused:
            raise TestbedError(
                f"{name!r} refused {what} (command {command!r}: {'; '.join(refused)})"
            )

    def set_pump(self, current_a: float, on: bool = True) -> None:
        """Set the pump laser current (A) and output, as the laser's commands would.

        TestbedError names the laser and the value if it refuses: an out-of-range
        current changes nothing; a refused output (interlock open) leaves the new current.
        """
        current = float(current_a)
        if not math.isfinite(current):
            raise TestbedError(f"pump current must be a finite number, got {current_a!r} A")
        name, laser = self._laser_name, self.laser
        with laser.lock:
            self._scpi_set(name, laser, f"SOUR1:CURR {current:.6E}", f"pump current {current} A")
            state = "ON" if on else "OFF"
            self._scpi_set(name, laser, f"OUTP1:STAT {state}", f"laser output {state}")

    def set_bias(self, channel: int, current_a: float) -> None:
        """Set the bias of the SNSPD on ``channel`` (through its SMU if one drives it).

        TestbedError names the SMU and the value if it refuses (the bias is then unchanged).
        """
        if not 0 <= channel < 8:
            raise TestbedError(f"bias channel {channel} is not in 0..7")
        current = float(current_a)
        if not math.isfinite(current):
            raise TestbedError(
                f"bias of channel {channel} must be a finite number, got {current_a!r} A"
            )
        for name, spec in self._roles("keithley_2400"):
            if channel in spec.channels:
                self._scpi_set(
                    name,
                    self.emulators[name],
                    f":SOUR:CURR {current:.6E}",
                    f"bias {current} A on channel {channel}",
                )
                return
        with self._lock:
            self._bias[channel] = current
            self._latched[channel] = ph.next_latched(
                bool(self._latched[channel]), current, self._det[channel]
            )

    def set_compensator_voltages(self, voltages_v: list[float]) -> None:
        """Set the polarization controller's element voltages (V), as ``ld:k,counts`` would.

        Every element needs a voltage the controller accepts; all are checked before any
        is sent, so a refused request changes nothing (TestbedError names the element).
        """
        comp = self.compensator
        if comp is None:
            raise TestbedError("the node has no polarization controller (meadowlark_d3050)")
        name = self._roles("meadowlark_d3050")[0][0]
        n = len(comp.counts)
        values = list(voltages_v)
        if len(values) != n:
            raise TestbedError(
                f"compensator {name!r} takes {n} voltages (elements 1..{n}), "
                f"got {len(values)}: {values}; nothing was changed"
            )
        v_max = comp.MAX_COUNTS / comp.COUNTS_PER_V
        counts = []
        for k, v in enumerate(values, start=1):
            x = float(v)
            c = round(x * comp.COUNTS_PER_V) if math.isfinite(x) else -1
            if not 0 <= c <= comp.MAX_COUNTS:
                raise TestbedError(
                    f"compensator {name!r}: element {k} voltage {v} V is outside "
                    f"0..{v_max:g} V; nothing was changed"
                )
            counts.append(c)
        with comp.lock:
            for k, c in enumerate(counts, start=1):
                if comp.handle(f"ld:{k},{c}") == "?":  # the emulator disagrees with the check
                    raise TestbedError(f"compensator {name!r} refused {c} counts on element {k}")

    # -- run-time hooks for tests -------------------------------------------------------------
    def impose_rotation(self, vector_rad: tuple[float, float, float] | np.ndarray) -> None:
        """Rotate Bob's fiber by the Poincare rotation vector (rad), on top of its state."""
        with self._lock:
            self.u_fiber = ph.rotation(vector_rad) @ self.u_fiber

    def set_fiber_unitary(self, u: np.ndarray) -> None:
        """Replace Bob's fiber unitary."""
        u = np.asarray(u, complex)
        if u.shape != (2, 2) or not np.allclose(u.conj().T @ u, np.eye(2), atol=1e-9):
            raise TestbedError("fiber unitary must be a 2x2 unitary matrix")
        with self._lock:
            self.u_fiber = u

    def set_drift(self, rad_per_sqrt_s: float) -> None:
        """Strength of the fiber's polarization random walk (rad / sqrt(s)); 0 stops it."""
        if not (math.isfinite(rad_per_sqrt_s) and rad_per_sqrt_s >= 0):
            raise TestbedError(f"drift must be finite and >= 0, got {rad_per_sqrt_s}")
        with self._lock:
            self.drift_rad_per_sqrt_s = float(rad_per_sqrt_s)

    def inject_fault(self, name: str, mode: str) -> None:
        """Fault ``mode`` on the served instrument ``name`` (``none`` restores it)."""
        if mode not in FAULT_MODES:
            raise TestbedError(f"fault mode {mode!r} is not one of {FAULT_MODES}")
        server = self._servers.get(name)
        if server is None:
            raise TestbedError(
                f"no served instrument named {name!r} (serving {sorted(self._servers)})"
            )
        if mode == "none":
            server.restore()
        else:
            server.inject(mode)

    def compensating_voltages(self) -> list[float]:
        """Controller voltages that undo the current fiber rotation (the ideal compensation)."""
        with self._lock:
            return ph.compensator_voltages(self.u_fiber.conj().T, self.params.compensator)

    # -- physics state ----------------------------------------------------------------------
    def pump_power_w(self) -> float:
        """Pump power now, W (from the laser emulator's current and output state)."""
        laser = self.laser
        return ph.pump_power_w(laser.current_setpoint_a, laser.laser_emitting, self.params.laser)

    def _sync_detectors(self) -> None:
        """Copy the SMUs' bias and latch state, and the SPAD modules' dead time, into the model."""
        for name, spec in self._roles("idq_id120"):
            dead_ps = round(float(self.emulators[name].dead_time_s) * 1e12)
            for c in spec.channels:
                self.generator.dead_time_ps[c] = dead_ps
        for name, spec in self._roles("keithley_2400"):
            smu = self.emulators[name]
            bias = smu.bias_current_a if smu.output_on else 0.0
            for c in spec.channels:
                self._bias[c] = bias
                self._latched[c] = bool(smu.latched)

    def u_bob(self) -> np.ndarray:
        """Bob's total polarization unitary: fiber, then the controller."""
        comp = self.compensator
        if comp is None:
            return self.u_fiber
        key = tuple(comp.counts)
        if key != self._comp_key:
            self._comp_u = ph.compensator_unitary_from_voltages(
                comp.setpoints, self.params.compensator
            )
            self._comp_key = key
        return self._comp_u @ self.u_fiber

    def _gated(self) -> np.ndarray:
        """Channels whose SPAD module is switched off (``REG:RUN FALSE``)."""
        off = np.zeros(8, bool)
        for name, spec in self._roles("idq_id120"):
            if not self.emulators[name].running:
                off[list(spec.channels)] = True
        return off

    def efficiencies(self) -> np.ndarray:
        """Detection efficiency of each of the 8 detectors now."""
        return np.where(self._gated(), 0.0, self._efficiencies())

    def dark_rates_hz(self) -> np.ndarray:
        """Dark-count rate of each of the 8 detectors now, 1/s."""
        return np.where(self._gated(), 0.0, self._dark_rates_hz())

    def _efficiencies(self) -> np.ndarray:
        return np.array(
            [
                ph.detector_efficiency(self._bias[c], bool(self._latched[c]), self._det[c])
                for c in range(8)
            ]
        )

    def _dark_rates_hz(self) -> np.ndarray:
        return np.array(
            [
                ph.detector_dark_rate_hz(self._bias[c], bool(self._latched[c]), self._det[c])
                for c in range(8)
            ]
        )

    def latched(self) -> np.ndarray:
        """Latch state of each of the 8 detectors."""
        with self._lock:
            self._sync_detectors()
            return self._latched.copy()

    def _tables(self) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Generator tables for the current state (recomputed only when the state changed)."""
        p = self.params
        self._sync_detectors()
        laser = self.laser
        comp = self.compensator
        key = (
            laser.current_setpoint_a,
            laser.laser_emitting,
            self._bias.tobytes(),
            self._latched.tobytes(),
            self._gated().tobytes(),
            tuple(comp.counts) if comp is not None else (),
            self.u_fiber.tobytes(),
        )
        if key != self._cache_key:
            rate = ph.pair_rate_hz(self.pump_power_w(), p.source)
            joint = ph.joint_detector_probabilities(self.u_bob(), p.source)
            r, cum, ch_a, ch_b = ph.event_classes(
                rate,
                joint,
                ph.arm_transmission(p.alice),
                ph.arm_transmission(p.bob),
                self.efficiencies(),
            )
            self._cache = (r, cum, ch_a, ch_b, self.dark_rates_hz())
            self._cache_key = key
        return self._cache

    def expected_rates(self) -> dict[str, Any]:
        """What the model predicts now: pair rate, singles per channel, true coincidences (4x4).

        At the Bob site of a two-process testbed: what Alice's process last reported.
        """
        if self._downlink is not None:
            info = self._downlink.info
            return {
                "pair_rate_hz": float(info.get("pair_rate_hz", 0.0)),
                "singles_hz": np.asarray(info.get("singles_hz", [0.0] * 8), float),
                "coincidences_hz": np.asarray(info.get("coincidences_hz", np.zeros((4, 4)))),
                "qber_z": float(info.get("qber_z", 0.5)),
                "qber_x": float(info.get("qber_x", 0.5)),
            }
        with self._lock:
            p = self.params
            self._sync_detectors()
            rate = ph.pair_rate_hz(self.pump_power_w(), p.source)
            joint = ph.joint_detector_probabilities(self.u_bob(), p.source)
            ta, tb = ph.arm_transmission(p.alice), ph.arm_transmission(p.bob)
            eff = self.efficiencies()
            qz, qx = ph.expected_qber(self.u_bob(), p.source)
            return {
                "pair_rate_hz": rate,
                "singles_hz": ph.expected_singles_hz(
                    rate, joint, ta, tb, eff, self.dark_rates_hz()
                ),
                "coincidences_hz": ph.expected_coincidences_hz(rate, joint, ta, tb, eff),
                "qber_z": qz,
                "qber_x": qx,
            }

    def _counts_per_second(self, channels: list[int]) -> list[int]:
        """A time controller's input counters: counts in 1 s, drawn around the model's rate.

        Photon counting is a Poisson process, so each read is an independent Poisson
        draw with the model's mean (singles with dead time): channels with equal rates
        report different counts, and repeated reads scatter by sqrt(N), as on hardware.
        """
        with self._lock:
            rates = self.expected_rates()["singles_hz"]
            means = [
                ph.dead_time_rate_hz(float(rates[c]), float(self.generator.dead_time_ps[c]))
                for c in channels
            ]
            return [int(n) for n in self._counts_rng.poisson(means)]

    def _spad_rate(self, name: str, channels: list[int]) -> float:
        """Count rate the SPAD module reports: the model rate of its channel(s), with dead time."""
        emu = self.emulators.get(name)
        if emu is not None and not emu.running:
            return 0.0
        rates = self.expected_rates()["singles_hz"]
        total = 0.0
        for c in channels:
            total += ph.dead_time_rate_hz(float(rates[c]), float(self.generator.dead_time_ps[c]))
        return total

    # -- the clock and the stream -----------------------------------------------------------
    @property
    def sim_time_ps(self) -> int:
        """Simulated time up to which pairs have been generated, ps.

        Read under the generation lock: a step reads the controls when it starts, so
        a change made while a step is being generated applies only from its end. Waiting
        for that end makes the returned time a safe boundary: every pair after it sees
        every control change made before the call.
        """
        with self._lock:
            return self.generator.pair_time_ps

    def advance(self, duration_ps: int) -> TagBatch:
        """Generate ``duration_ps`` more simulated time; returns the 8-channel true-time batch.

        Every subscriber (served taggers, :class:`TestbedTagSource`) receives its view of
        the same tags, so in-process readers and served streams stay consistent.
        """
        if duration_ps <= 0:
            raise TestbedError(f"duration_ps must be > 0, got {duration_ps}")
        with self._lock:
            parts = []
            left = int(duration_ps)
            while left > 0:
                into = self.generator.pair_time_ps % self.step_ps
                d = min(left, self.step_ps - into)
                if into == 0:
                    self._between_steps()
                rate, cum, ch_a, ch_b, dark = self._tables()
                seed = _step_seed(self.config.seed, self._step_index * 1_000_003 + into)
                ts, ch, b, e = self.generator.step(seed, d, rate, cum, ch_a, ch_b, dark)
                parts.append(TagBatch(ts, ch, b, e))
                left -= d
            batch = parts[0] if len(parts) == 1 else TagBatch.concatenate(parts)
            views: dict[str, TagBatch] = {}
            for sub in self._subs:
                view = views.get(sub.side)
                if view is None:
                    view = views[sub.side] = self._view(batch, sub.side)
                sub.push(view)
            return batch

    def _between_steps(self) -> None:
        """State update at a step boundary: the fiber's random walk."""
        self._step_index += 1
        if self.drift_rad_per_sqrt_s > 0:
            rng = self._walk_rng
            self.u_fiber = ph.random_walk(
                self.u_fiber, self.drift_rad_per_sqrt_s, self.config.step_s, rng
            )

    def _view(self, batch: TagBatch, side: Side) -> TagBatch:
        """The part of an 8-channel batch a tagger on ``side`` sees, in that tagger's clock."""
        if side == "both":
            if self.params.clocks.mode == "two_taggers":
                raise TestbedError(
                    "two_taggers mode has no shared 8-channel view; read 'alice' and 'bob'"
                )
            return batch
        keep = batch.channels < 4 if side == "alice" else batch.channels >= 4
        ts = batch.timestamps[keep]
        ch = batch.channels[keep]
        if side == "bob":
            ch = (ch - 4).astype(np.uint8)
        if self.params.clocks.mode != "two_taggers":
            return TagBatch(ts, ch, batch.begin_ps, batch.end_ps)
        return self._on_clock(side, ts, ch, batch.begin_ps, batch.end_ps)

    def _on_clock(
        self, side: str, ts: np.ndarray, ch: np.ndarray, begin: int, end: int
    ) -> TagBatch:
        """One side's tags in its tagger's clock, contiguous with that side's previous view.

        A clock slower than true time may map the last true picoseconds of a batch onto
        one reading; the interval is widened to hold every tag and the next view begins
        where this one ended, so the stream stays contiguous and sorted.
        """
        clock = self.clocks[side]
        out = clock.read(ts)
        prev = self._view_end.get(side)
        b = prev[1] if prev is not None and prev[0] == begin else clock.read(begin)
        e = max(clock.read(end), b)
        if out.size:
            b = min(b, int(out[0]))
            e = max(e, int(out[-1]) + 1)
        self._view_end[side] = (end, e)
        return TagBatch(out, ch, b, e)

    def bob_clock(self, t_ps: Any) -> Any:
        """Bob's tagger reading (ps) at true time ``t_ps`` (two_taggers mode)."""
        return self.clocks["bob"].read(t_ps)

    def alice_clock(self, t_ps: Any) -> Any:
        """Alice's tagger reading (ps) at true time ``t_ps`` (two_taggers mode)."""
        return self.clocks["alice"].read(t_ps)

    def clock_truth(self, t_ps: int) -> dict[str, float]:
        """What a clock sync should find at true time ``t_ps``.

        Bob's reading minus Alice's (ps; the fiber delay comes on top for a photon
        pair) and Bob's clock rate relative to Alice's (ppm).
        """
        a, b = self.clocks["alice"], self.clocks["bob"]
        return {
            "offset_ps": float(b.read(int(t_ps)) - a.read(int(t_ps))),
            "ppm": ((1.0 + b.rate) / (1.0 + a.rate) - 1.0) * 1e6,
            "fiber_delay_ps": float(ph.fiber_delay_ps(self.params.bob)),
        }

    def subscribe(self, side: Side) -> _Subscriber:
        """A queue that receives this side's view of every batch generated from now on."""
        if side == "both" and self.params.clocks.mode == "two_taggers":
            raise TestbedError(
                "two_taggers mode has no shared 8-channel view; subscribe 'alice' and 'bob'"
            )
        sub = _Subscriber(side)
        with self._lock:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        """Stop feeding ``sub``."""
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def _take(self, sub: _Subscriber, duration_ps: int) -> TagBatch:
        """At least ``duration_ps`` of ``sub``'s stream (generating as needed), as one batch."""
        with self._lock:
            have = sum(b.duration_ps for b in sub.queue)
            if have < duration_ps or not sub.queue:
                self.advance(max(1, duration_ps - have))
            parts = sub.drain()
        return parts[0] if len(parts) == 1 else TagBatch.concatenate(parts)

    def _supply(self, name: str, side: Side, duration_ps: int) -> TagBatch:
        """Tag supplier of a served time tagger (subscribes on its first frame).

        At the Bob site of a two-process testbed, Bob's tags come from Alice's process.
        """
        downlink = self._downlink
        if downlink is not None and side == "bob":
            try:
                return downlink.take(int(duration_ps), self.site_state("bob"))
            except SiteLinkError as exc:  # the served stream drops; say why where it shows
                _log.warning("%s: %s", name, exc)
                raise
        with self._lock:
            sub = self._tagger_subs.get(name)
            if sub is None:
                sub = self._tagger_subs[name] = self.subscribe(side)
        return self._take(sub, int(duration_ps))

    def tag_source(self, side: Side = "both", *, speed: float | None = None) -> TestbedTagSource:
        """An in-process TagSource of ``side`` (``speed`` 0 = as fast as asked; default config)."""
        return TestbedTagSource(self, side, speed=self.config.speed if speed is None else speed)

    # -- serving --------------------------------------------------------------------------------
    def site_of(self, name: str) -> Site:
        """The site whose process serves instrument ``name`` (see ``InstrumentSpec.site``)."""
        spec = self.config.instruments[name]
        if spec.site is not None:
            return spec.site
        if spec.driver == "idq_id1000":
            side = self._tagger_side(name, spec)
            return "bob" if side == "bob" else "alice"
        if spec.driver in _DRIVER_SITE:
            return _DRIVER_SITE[spec.driver]
        return "bob" if spec.channels and min(spec.channels) >= 4 else "alice"

    def site_state(self, site: Site) -> dict[str, dict[str, Any]]:
        """The settings of ``site``'s instruments that act on the photons (JSON-able).

        Polarization controller counts, SMU bias/output/latch, SPAD gate and dead time:
        what the Bob-site process sends with each request for Bob's photons.
        """
        out: dict[str, dict[str, Any]] = {}
        for name, spec in self.config.instruments.items():
            if self.site_of(name) != site:
                continue
            emu = self.emulators[name]
            with emu.lock:
                if spec.driver == "meadowlark_d3050":
                    out[name] = {"counts": [int(c) for c in emu.counts]}
                elif spec.driver == "idq_id120":
                    out[name] = {"running": bool(emu.running), "dead_time_s": emu.dead_time_s}
                elif spec.driver == "keithley_2400":
                    out[name] = {
                        "bias_current_a": float(emu.bias_current_a),
                        "output_on": bool(emu.output_on),
                        "latched": bool(emu.latched),
                    }
        return out

    def apply_site_state(self, state: dict[str, Any]) -> None:
        """Take over the other site's instrument settings (from :meth:`site_state`).

        Every entry is checked first (known instrument, right kind, values in range);
        ValueError names the first bad one and nothing is changed.
        """
        plan: list[tuple[Any, dict[str, Any]]] = []
        for name, st in state.items():
            spec = self.config.instruments.get(name)
            if spec is None or not isinstance(st, dict):
                raise ValueError(f"site state: unknown instrument {name!r}")
            emu = self.emulators[name]
            if spec.driver == "meadowlark_d3050":
                counts = st.get("counts")
                if (
                    not isinstance(counts, list)
                    or len(counts) != len(emu.counts)
                    or not all(isinstance(c, int) and 0 <= c <= emu.MAX_COUNTS for c in counts)
                ):
                    raise ValueError(
                        f"site state: {name}.counts must be {len(emu.counts)} "
                        f"integers in 0..{emu.MAX_COUNTS}, got {counts!r}"
                    )
                plan.append((emu, {"counts": list(counts)}))
            elif spec.driver == "idq_id120":
                dead = st.get("dead_time_s")
                if not isinstance(dead, (int, float)) or not 0 < float(dead) < 1:
                    raise ValueError(f"site state: {name}.dead_time_s must be in (0, 1) s")
                plan.append((emu, {"running": bool(st.get("running")), "dead_time_s": float(dead)}))
            elif spec.driver == "keithley_2400":
                bias = st.get("bias_current_a")
                if not isinstance(bias, (int, float)) or not math.isfinite(float(bias)):
                    raise ValueError(f"site state: {name}.bias_current_a must be a finite number")
                plan.append(
                    (
                        emu,
                        {
                            "bias_current_a": float(bias),
                            "output_on": bool(st.get("output_on")),
                            "latched": bool(st.get("latched")),
                        },
                    )
                )
            else:
                raise ValueError(f"site state: {name!r} ({spec.driver}) carries no state")
        for emu, values in plan:
            with emu.lock:
                for attr, v in values.items():
                    if attr == "counts":
                        emu.counts[:] = v
                    else:
                        setattr(emu, attr, v)

    def _uplink_answer(
        self, want_ps: int, state: dict[str, Any]
    ) -> tuple[TagBatch, dict[str, Any]]:
        """Answer of the Alice-site process to the Bob-site tagger: Bob's next photons."""
        self.apply_site_state(state)
        with self._lock:
            sub = self._tagger_subs.get("_site_link")
            if sub is None:
                sub = self._tagger_subs["_site_link"] = self.subscribe("bob")
            batch = self._take(sub, want_ps)
            exp = self.expected_rates()
        info = {
            "pair_rate_hz": float(exp["pair_rate_hz"]),
            "singles_hz": [float(x) for x in exp["singles_hz"]],
            "coincidences_hz": np.asarray(exp["coincidences_hz"], float).tolist(),
            "qber_z": float(exp["qber_z"]),
            "qber_x": float(exp["qber_x"]),
        }
        return batch, info

    def serve_site(self, site: Site) -> dict[str, str]:
        """Serve one site's instruments (a ``qnet sim --site`` process).

        Alice's site also runs the physics and answers Bob's site on ``site_link``;
        Bob's site fetches Bob's photons from there.
        """
        if self.params.clocks.mode != "two_taggers":
            raise TestbedError(
                "serving one site needs physics.clocks.mode: two_taggers (each site its tagger)"
            )
        if not self.config.site_link:
            raise TestbedError("serving one site needs site_link: tcp://127.0.0.1:PORT")
        try:
            if site == "alice":
                self._uplink = SiteUplink(self.config.site_link, self._uplink_answer).start()
            else:
                self._downlink = SiteDownlink(self.config.site_link)
        except ValueError as exc:
            raise TestbedError(f"site_link: {exc}") from None
        except Exception as exc:  # zmq.ZMQError: the port is taken
            raise TestbedError(f"site_link {self.config.site_link}: {exc}") from None
        try:
            return self.serve(site=site)
        except Exception:
            self.stop()
            raise

    def serve(self, host_override: str | None = None, site: Site | None = None) -> dict[str, str]:
        """Start an InstrumentServer per configured instrument (of ``site``, if given).

        Returns name -> address served.
        """
        served: dict[str, str] = {}
        try:
            for name, spec in self.config.instruments.items():
                if not spec.resource or (site is not None and self.site_of(name) != site):
                    continue
                try:
                    host, port = socket_address(spec.resource)
                except ValueError as exc:
                    raise TestbedError(f"cannot serve instrument {name!r}: {exc}") from None
                mode = self.config.faults.get(name, "none")
                server = InstrumentServer(
                    self.emulators[name],
                    host=host_override or host,
                    port=port,
                    faults=FaultConfig(mode),
                    stream_port=spec.stream_port or 0,
                    frame_period_s=self.config.chunk_s,
                )
                server.start()
                self._servers[name] = server
                served[name] = spec.resource
            unknown = set(self.config.faults) - set(self._servers)
            if site is not None:
                unknown = {
                    n
                    for n in unknown
                    if n not in self.config.instruments or self.site_of(n) == site
                }
            if unknown:
                raise TestbedError(
                    f"faults name instruments that are not served: {sorted(unknown)}"
                )
        except Exception:
            self.stop()
            raise
        return served

    @property
    def clock_speed(self) -> float:
        """Pace of the wall-clock-driven parts: ``config.speed``, or 1 (real time) if it is 0.

        ``speed`` 0 means "as fast as asked" for in-process readers; the background
        clock and the served taggers' frames follow the wall clock and cannot run
        unboundedly fast, so they run at real time then.
        """
        return self.config.speed if self.config.speed > 0 else 1.0

    def start_clock(self, speed: float | None = None) -> None:
        """Advance simulated time in a background thread at ``speed`` x real time.

        Keeps the physics (polarization drift, rates) evolving while no stream is read;
        readers that pull faster simply run ahead and the clock waits for the wall clock.
        ``speed`` defaults to :attr:`clock_speed` (the config's, 0 there meaning 1).
        """
        speed = self.clock_speed if speed is None else float(speed)
        if not (math.isfinite(speed) and speed > 0):
            raise TestbedError(f"clock speed must be finite and > 0, got {speed}")
        if self._clock_thread is not None:
            return
        self._clock_stop.clear()
        t0_wall, t0_sim = time.monotonic(), self.sim_time_ps

        def run() -> None:
            while not self._clock_stop.wait(min(0.05, self.config.step_s / speed)):
                target = t0_sim + round((time.monotonic() - t0_wall) * speed * 1e12)
                behind = target - self.sim_time_ps
                if behind > 0:
                    self.advance(min(behind, 10 * self.step_ps))

        self._clock_thread = threading.Thread(target=run, daemon=True, name="testbed-clock")
        self._clock_thread.start()

    def stop_clock(self) -> None:
        """Stop the background clock; idempotent."""
        thread, self._clock_thread = self._clock_thread, None
        if thread is not None:
            self._clock_stop.set()
            thread.join(timeout=5.0)

    @property
    def servers(self) -> dict[str, InstrumentServer]:
        """The running servers by instrument name."""
        return dict(self._servers)

    def stop(self) -> None:
        """Stop the clock, every server and the site link; idempotent."""
        self.stop_clock()
        uplink, self._uplink = self._uplink, None
        if uplink is not None:
            uplink.stop()
        downlink, self._downlink = self._downlink, None
        if downlink is not None:
            downlink.close()
        servers, self._servers = list(self._servers.values()), {}
        for s in servers:
            s.stop()

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TestbedTagSource(TagSource):
    """The testbed's tag stream as a TagSource, in-process.

    ``speed`` 0: each ``read`` returns the next ``chunk_s`` of simulated time at
    once (faster than real time). ``speed`` > 0: paced, ``read`` returns what
    simulated time ``speed`` x the wall-clock time since the first read allows
    (waiting up to ``timeout_s`` for at least one step).
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        testbed: Testbed,
        side: Side = "both",
        *,
        speed: float = 0.0,
        chunk_s: float | None = None,
    ) -> None:
        if speed < 0 or not math.isfinite(speed):
            raise TestbedError(f"speed must be finite and >= 0, got {speed}")
        self.testbed = testbed
        self.side = side
        self.speed = float(speed)
        self.chunk_ps = round((chunk_s or testbed.config.chunk_s) * 1e12)
        self._sub: _Subscriber | None = testbed.subscribe(side)
        self._t0_wall: float | None = None
        self._t0_sim = 0
        self._taken_ps = 0

    @property
    def n_channels(self) -> int:
        """8 for the shared view, 4 for one side."""
        return 8 if self.side == "both" else 4

    def read(self, timeout_s: float = 1.0) -> TagBatch | None:
        """The next batch (see the class docstring); None once closed."""
        sub = self._sub
        if sub is None:
            return None
        if self.speed == 0:
            return self.testbed._take(sub, self.chunk_ps)
        now = time.monotonic()
        if self._t0_wall is None:
            self._t0_wall = now
        deadline = now + timeout_s
        min_ps = min(self.chunk_ps, self.testbed.step_ps)
        while True:
            due = round((time.monotonic() - self._t0_wall) * self.speed * 1e12) - self._taken_ps
            if due >= min_ps or time.monotonic() >= deadline:
                break
            time.sleep(min(0.005, max(0.0, deadline - time.monotonic())))
        due = max(1, due)
        batch = self.testbed._take(sub, due)
        self._taken_ps += batch.duration_ps
        return batch

    def close(self) -> None:
        """Stop receiving batches; idempotent."""
        if self._sub is not None:
            self.testbed.unsubscribe(self._sub)
            self._sub = None


def load_testbed(path: str | Path) -> Testbed:
    """A Testbed from a testbed YAML file (not serving yet)."""
    return Testbed(TestbedConfig.load(path))


__all__ = [
    "EMULATORS",
    "InitialState",
    "InstrumentSpec",
    "Testbed",
    "TestbedConfig",
    "TestbedError",
    "TestbedTagSource",
    "load_testbed",
]
