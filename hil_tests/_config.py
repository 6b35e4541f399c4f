"""The HIL config: a node config (instruments, addresses, limits) plus a ``hil:`` section.

Two shapes are accepted:

* a node config with a ``hil:`` section appended (what a lab writes for its bench);
* a small file with ``node_config: <path>`` and a ``hil:`` section (``configs/hil-sim.yaml``).

``hil.extends: <path>`` takes every HIL setting of another config (this file's keys
win, mappings merge key by key). Relative paths are relative to the file that names
them. Errors name the file and the key path.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.config import (
    ConfigError,
    NodeConfig,
    format_validation_errors,
    load_node_config,
    read_yaml,
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmulateSettings(_Model):
    """Run-time setup of the emulated testbed (only valid together with ``testbed``)."""

    fiber_rotation_rad: tuple[float, float, float] | None = None
    disarm_detector_modules: list[str] = Field(default_factory=list)


class DetectorSettings(_Model):
    """Which tagger channel is which detector, and which instrument biases or arms it."""

    alice: dict[str, int] = Field(default_factory=lambda: {"H": 0, "V": 1, "D": 2, "A": 3})
    bob: dict[str, int] = Field(default_factory=lambda: {"H": 4, "V": 5, "D": 6, "A": 7})
    bell_state: str = "phi+"
    instruments: dict[str, str] = Field(default_factory=dict)

    def names(self) -> dict[int, str]:
        """Channel -> detector name (``alice_H``...)."""
        out = {ch: f"alice_{label}" for label, ch in self.alice.items()}
        out.update({ch: f"bob_{label}" for label, ch in self.bob.items()})
        return out


class LaserSettings(_Model):
    """Pump settings of the optical checks."""

    on_current_a: float = Field(0.04, gt=0)
    threshold_current_a: float = Field(0.0, ge=0)


class SweepSettings(_Model):
    """The pump-power sweep."""

    currents_a: list[float] = Field(min_length=3)
    window_s: float = Field(0.1, gt=0)
    min_r2: float = Field(0.99, gt=0, le=1)
    car_drop_factor: float = Field(2.0, ge=1)
    car_rise_tolerance: float = Field(0.25, ge=0)


class DelaySettings(_Model):
    """The delay calibration check."""

    fiber_delay_ps: int
    bin_ps: int = Field(100, gt=0)
    max_delay_ps: int = Field(20_000_000, gt=0)
    window_s: float = Field(0.2, gt=0)


class QberSettings(_Model):
    """The QBER-after-compensation check."""

    max: float = Field(0.04, gt=0, lt=0.5)
    target: float = Field(0.025, gt=0, lt=0.5)
    window_s: float = Field(0.05, gt=0)
    verify_window_s: float = Field(0.3, gt=0)
    max_evaluations: int = Field(120, ge=1)
    initial_step_v: float = Field(0.5, gt=0)


class InterlockSettings(_Model):
    """The interlock trip-and-recovery check (SNSPD latch)."""

    latch_bias_a: float = Field(gt=0)
    recover_bias_a: float = Field(ge=0)


class TelemetrySettings(_Model):
    """Where the run's telemetry goes on a real bench (the testbed starts its own servers)."""

    mqtt_host: str | None = None
    mqtt_port: int = 1883
    influx_url: str | None = None
    """A VictoriaMetrics URL: the check writes through its InfluxDB API and reads back."""


class HilSettings(_Model):
    """The ``hil:`` section (SI units, picoseconds for delays)."""

    testbed: str | None = None
    """Testbed YAML to start in-process (emulated bench); None on a real bench."""
    emulate: EmulateSettings = EmulateSettings()
    detectors: DetectorSettings = DetectorSettings()
    laser: LaserSettings = LaserSettings()
    dark_count_max_hz: float = Field(1000.0, gt=0)
    dark_count_window_s: float = Field(0.5, gt=0)
    min_singles_hz: float = Field(1000.0, ge=0)
    sweep: SweepSettings | None = None
    coincidence_window_ps: int = Field(1000, gt=0)
    accidental_offsets_ps: tuple[int, int] = (250_000, 1_000_000)
    delay: DelaySettings | None = None
    qber: QberSettings = QberSettings()
    interlock: InterlockSettings | None = None
    telemetry: TelemetrySettings = TelemetrySettings()

    @model_validator(mode="after")
    def _emulate_needs_testbed(self) -> HilSettings:
        e = self.emulate
        if self.testbed is None and (e.fiber_rotation_rad or e.disarm_detector_modules):
            raise ValueError("emulate: only valid with an emulated testbed (hil.testbed)")
        lo, hi = self.accidental_offsets_ps
        if not 0 < lo < hi:
            raise ValueError("accidental_offsets_ps: expected [min, max] with 0 < min < max")
        return self


class HilConfig:
    """A loaded HIL config: the node config, the HIL settings and where they came from."""

    def __init__(self, path: Path, node: NodeConfig, hil: HilSettings, base_dir: Path) -> None:
        self.path = path
        self.node = node
        self.hil = hil
        self.base_dir = base_dir

    @property
    def testbed_path(self) -> Path | None:
        """The testbed YAML (absolute), if this config runs against the emulated testbed."""
        if self.hil.testbed is None:
            return None
        return (self.base_dir / self.hil.testbed).resolve()

    @property
    def emulated(self) -> bool:
        """Whether the bench is the in-process emulated testbed."""
        return self.hil.testbed is not None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _hil_section(path: Path, data: dict[str, Any], seen: tuple[Path, ...]) -> dict[str, Any]:
    """The ``hil:`` mapping of ``data`` with ``extends`` resolved; paths made absolute."""
    raw = data.get("hil")
    if raw is None:
        raise ConfigError(f"{path}: no 'hil:' section (see hil_tests/README.md)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: hil: expected a mapping")
    raw = dict(raw)
    if isinstance(raw.get("testbed"), str):
        raw["testbed"] = str((path.parent / raw["testbed"]).resolve())
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    ppath = (path.parent / str(parent)).resolve()
    if ppath in seen:
        raise ConfigError(f"{path}: hil.extends: {ppath} extends itself")
    base = _hil_section(ppath, read_yaml(ppath), (*seen, ppath))
    return _merge(base, raw)


def load_hil_config(path: str | Path) -> HilConfig:
    """Read a HIL config (see the module docstring); ConfigError names file and key path."""
    p = Path(path).resolve()
    data = read_yaml(p)
    hil_raw = _hil_section(p, data, (p,))
    if "node_config" in data:
        node = load_node_config((p.parent / str(data["node_config"])).resolve())
    else:
        body = {k: v for k, v in data.items() if k != "hil"}
        try:
            node = NodeConfig.model_validate(body)
        except ValidationError as exc:
            raise ConfigError(format_validation_errors(p, exc)) from None
    try:
        hil = HilSettings.model_validate(hil_raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_errors(p, exc, prefix="hil.")) from None
    return HilConfig(p, node, hil, p.parent)
