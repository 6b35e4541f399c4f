"""The bench under test: the drivers opened from the config, the tag stream, the safe state.

On the emulated testbed (``hil.testbed``) the testbed runs in-process on free
loopback ports (the node config's addresses are moved with it, so parallel runs
never clash) and tags come from its in-process stream, faster than real time.
On a real bench the tags come from the first time tagger's stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from coincidence import RoleMap, TagBatch
from controller.commands import surface_for
from controller.config import NodeConfig
from drivers import Instrument, InstrumentError, with_port
from drivers.sim import free_port

from ._config import HilConfig

#: Driver key -> instrument kind (what the checks ask for).
KINDS: dict[str, str] = {
    "thorlabs_cld1015": "laser",
    "keithley_2400": "bias_source",
    "idq_id120": "spad",
    "thorlabs_pm100": "power_meter",
    "meadowlark_d3050": "polarization_controller",
    "idq_id1000": "time_tagger",
}

#: Kind -> what an operator calls it (skip reasons, messages).
KIND_TEXT: dict[str, str] = {
    "laser": "pump laser controller (thorlabs_cld1015)",
    "bias_source": "SNSPD bias source (keithley_2400)",
    "spad": "SPAD module (idq_id120)",
    "power_meter": "power meter (thorlabs_pm100)",
    "polarization_controller": "polarization controller (meadowlark_d3050)",
    "time_tagger": "time tagger (idq_id1000)",
}

#: Minimum driver timeout against the in-process testbed, s.
EMULATED_TIMEOUT_S = 2.0

#: Kind of each driver's settable switch that is safe OFF (else switches are restored).
SAFE_OFF: dict[str, tuple[str, ...]] = {"laser": ("laser_on",)}


class TrafficWatch(logging.Handler):
    """Counts bytes sent to one instrument (``qnet.traffic`` log) while installed."""

    def __init__(self, instrument: str) -> None:
        super().__init__(logging.DEBUG)
        self.instrument = instrument
        self.sent: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the sends to our instrument."""
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) >= 4 and args[1] == self.instrument and args[2] == ">>":
            self.sent.append(repr(args[3]))


@contextmanager
def watch_traffic(instrument: str) -> Iterator[TrafficWatch]:
    """Record what is sent to ``instrument`` inside the block (debug traffic log)."""
    log = logging.getLogger("qnet.traffic")
    handler = TrafficWatch(instrument)
    old = log.level
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(old)


class Bench:
    """The instruments of one HIL config, opened; tags; pump control; safe state."""

    def __init__(self, config: HilConfig) -> None:
        self.config = config
        self.hil = config.hil
        self.node: NodeConfig = config.node
        self.testbed: Any = None
        self.instruments: dict[str, Instrument] = {}
        self.open_errors: dict[str, str] = {}
        self._snapshot: dict[str, dict[str, Any]] = {}
        self.memo: dict[str, Any] = {}
        #: Plugin options the checks may consult (``run_optical``, ``run_destructive``).
        self.config_options: dict[str, Any] = {}
        self.detector_names = self.hil.detectors.names()
        self.n_channels = max(self.detector_names) + 1

    @property
    def roles(self) -> RoleMap:
        """Which channel is which detector (``hil.detectors``) as the core's RoleMap."""
        d = self.hil.detectors
        try:
            return RoleMap(alice=dict(d.alice), bob=dict(d.bob), bell_state=d.bell_state)
        except ValueError as exc:
            raise AssertionError(f"{self.config.path}: hil.detectors: {exc}") from None

    # -- start / stop ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the testbed (if emulated), open every driver and snapshot the settings."""
        if self.config.emulated:
            self._start_testbed()
        for name, ic in self.node.instruments.items():
            inst = ic.build(name)
            try:
                inst.connect()
            except InstrumentError as exc:
                self.open_errors[name] = str(exc)
                inst.close()
                continue
            self.instruments[name] = inst
        for name, inst in self.instruments.items():
            try:
                self._snapshot[name] = self._read_settings(inst)
            except InstrumentError as exc:
                self.open_errors.setdefault(name, f"cannot read its settings: {exc}")

    def _start_testbed(self) -> None:
        from drivers.sim.testbed import Testbed, TestbedConfig

        tcfg = TestbedConfig.load(str(self.config.testbed_path))
        node = self.node.model_copy(deep=True)
        for spec in tcfg.instruments.values():
            if not spec.resource:
                continue
            old = spec.resource
            spec.resource = with_port(old, free_port())
            old_stream = spec.stream_port
            if spec.stream_port is not None:
                spec.stream_port = free_port()
            for ic in node.instruments.values():
                if ic.resource == old:
                    ic.resource = spec.resource
                    if old_stream is not None and "stream_port" in ic.options:
                        ic.options["stream_port"] = spec.stream_port
        for ic in node.instruments.values():
            # in-process emulators share the GIL with the tag generator: allow for a busy machine
            ic.timeout_s = max(ic.timeout_s, EMULATED_TIMEOUT_S)
        self.node = node
        tb = Testbed(tcfg)
        tb.serve()
        self.testbed = tb
        emu = self.hil.emulate
        if emu.fiber_rotation_rad is not None:
            tb.impose_rotation(emu.fiber_rotation_rad)
        for name in emu.disarm_detector_modules:
            module = tb.emulators.get(name)
            if module is None or not hasattr(module, "running"):
                raise ValueError(f"hil.emulate.disarm_detector_modules: no SPAD module {name!r}")
            with module.lock:
                module.running = False

    def close(self) -> None:
        """Safe state, close every driver, stop the testbed; idempotent."""
        try:
            self.restore_safe_state()
        finally:
            for inst in self.instruments.values():
                inst.close()
            self.instruments.clear()
            if self.testbed is not None:
                self.testbed.stop()
                self.testbed = None

    # -- lookup -----------------------------------------------------------------------------
    def configured(self, kind: str) -> list[str]:
        """Names of the configured instruments of ``kind``."""
        return [n for n, ic in self.node.instruments.items() if KINDS.get(ic.driver) == kind]

    def of_kind(self, kind: str) -> list[tuple[str, Instrument]]:
        """The opened instruments of ``kind``."""
        return [(n, self.instruments[n]) for n in self.configured(kind) if n in self.instruments]

    def one(self, kind: str) -> tuple[str, Any]:
        """The first opened instrument of ``kind`` (AssertionError naming why it is not open)."""
        names = self.configured(kind)
        for n in names:
            if n in self.instruments:
                return n, self.instruments[n]
        why = "; ".join(f"{n}: {self.open_errors.get(n, '?')}" for n in names)
        raise AssertionError(f"no {KIND_TEXT[kind]} could be opened ({why})")

    def detector_hint(self, channel: int) -> str:
        """Where to look for a detector's problem (its bias/arming instrument)."""
        name = self.detector_names.get(channel, f"channel {channel}")
        inst = self.hil.detectors.instruments.get(name)
        via = f"the bias/arming ({inst})" if inst and inst in self.node.instruments else "its bias"
        return f"check the fiber to {name}, {via} and that the detector is not latched"

    # -- settings, snapshot and safe state ----------------------------------------------------
    def surface(self, name: str) -> Any:
        """The command surface (settings with getters/setters) of one instrument."""
        inst = self.instruments[name]
        return surface_for(name, type(inst), inst.limits)

    def _read_settings(self, inst: Instrument) -> dict[str, Any]:
        surf = surface_for(inst.name, type(inst), inst.limits)
        out: dict[str, Any] = {}
        for key, spec in surf.settings.items():
            out[key] = spec.getter(inst)
        if hasattr(inst, "threshold") and hasattr(inst, "N_INPUTS"):
            out["_thresholds"] = [inst.threshold(n) for n in range(1, inst.N_INPUTS + 1)]
        return out

    def restore_safe_state(self) -> list[str]:
        """Pump off, every other setting back to its value at start; returns what failed."""
        problems: list[str] = []
        ordered = sorted(self.instruments, key=lambda n: self._kind(n) != "laser")
        for name in ordered:
            inst = self.instruments[name]
            kind = self._kind(name)
            snap = self._snapshot.get(name, {})
            surf = surface_for(name, type(inst), inst.limits)
            for key in SAFE_OFF.get(kind, ()):
                try:
                    surf.settings[key].setter(inst, False)
                except (InstrumentError, KeyError) as exc:
                    problems.append(f"{name}.{key} -> off: {exc}")
            for key, value in snap.items():
                if key in SAFE_OFF.get(kind, ()):
                    continue
                try:
                    if key == "_thresholds":
                        for n, v in enumerate(value, start=1):
                            inst.set_threshold(n, v)  # type: ignore[attr-defined]
                    elif surf.settings[key].getter(inst) != value:
                        surf.settings[key].setter(inst, value)
                except (InstrumentError, KeyError) as exc:
                    problems.append(f"{name}.{key} -> {value!r}: {exc}")
            if hasattr(inst, "latched"):
                try:
                    if inst.latched():  # type: ignore[attr-defined]
                        inst.reset_latch()  # type: ignore[attr-defined]
                except InstrumentError as exc:
                    problems.append(f"{name}: latch reset: {exc}")
        return problems

    def _kind(self, name: str) -> str:
        return KINDS.get(self.node.instruments[name].driver, "")

    # -- pump and tags ----------------------------------------------------------------------------
    def pump(self, current_a: float | None = None, *, on: bool = True) -> float:
        """Set the pump current (default ``hil.laser.on_current_a``) and output; returns it."""
        _, laser = self.one("laser")
        current = self.hil.laser.on_current_a if current_a is None else float(current_a)
        laser.current_setpoint_a = current
        laser.laser_on = on
        if self.testbed is None:
            time.sleep(0.2)  # a real source settles
        return current

    def acquire(self, duration_s: float) -> TagBatch:
        """``duration_s`` of tags of every detector channel (simulated time on the testbed)."""
        if self.testbed is not None:
            src = self.testbed.tag_source("both", speed=0.0)
            return self._read(src, duration_s)
        _, tagger = self.one("time_tagger")
        tagger.set_streaming(True)
        try:
            with tagger.tag_source() as src:
                return self._read(src, duration_s)
        finally:
            tagger.set_streaming(False)

    def _read(self, src: Any, duration_s: float) -> TagBatch:
        want = round(duration_s * 1e12)
        parts: list[TagBatch] = []
        got = 0
        # a real stream must keep up; the in-process testbed generates each read on demand
        # (never stalls, but is slow on a loaded machine), so it gets no wall-clock deadline
        deadline = time.monotonic() + max(10.0, 20 * duration_s)
        if self.testbed is not None:
            deadline = float("inf")
        try:
            while got < want:
                b = src.read(timeout_s=1.0)
                if b is None:
                    break
                if b.duration_ps > 0 or len(b):  # a stream's empty keep-alive adds nothing
                    parts.append(b)
                    got += b.duration_ps
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"the tag stream delivered {got * 1e-12:.3g} s of {duration_s:g} s "
                        "in time; check the time tagger's stream connection"
                    )
        finally:
            src.close()
        if not parts:
            raise AssertionError("the tag stream delivered nothing; check the time tagger")
        return parts[0] if len(parts) == 1 else TagBatch.concatenate(parts)

    def rates_hz(self, batch: TagBatch) -> np.ndarray:
        """Count rate per detector channel, 1/s."""
        counts = np.bincount(batch.channels, minlength=self.n_channels)[: self.n_channels]
        return counts / max(batch.duration_ps * 1e-12, 1e-12)
