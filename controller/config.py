"""The node config: pydantic models and ``load_node_config``.

Today it holds the ``instruments`` section; the other sections of the daemon
config (telemetry, acquisition, interlocks) belong in this module too, as more
fields of :class:`NodeConfig`. Errors name the file, the key path and what was
expected.

Example::

    node: alice
    instruments:
      pump:
        driver: thorlabs_cld1015
        resource: TCPIP::127.0.0.1::15001::SOCKET
        timeout_s: 0.5
        limits: {current_setpoint_a: [0.0, 0.08]}
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from telemetry import check_node_name
from telemetry import format_validation_errors as format_validation_errors


class ConfigError(ValueError):
    """A config file is unreadable or invalid; the message names the file and key path."""


class InstrumentConfig(BaseModel):
    """One instrument: which driver, where it is, and its safe ranges.

    ``resource`` is a VISA resource name (``TCPIP::host::port::SOCKET``,
    ``USB0::...::INSTR``, ``ASRL...``), a pyserial port or URL (``/dev/ttyUSB0``,
    ``COM3``, ``socket://host:port``) or ``zmq://host:port``. ``limits`` maps a
    settable quantity of the driver to ``[min, max]`` in SI units; quantities not
    listed keep the driver's default range.
    """

    model_config = ConfigDict(extra="forbid")

    driver: str
    resource: str = Field(min_length=1)
    backend: str | None = Field(
        default=None, description='VISA backend: "@py" (default), "@ivi", "auto" or "file.yaml@sim"'
    )
    timeout_s: float = Field(default=1.0, gt=0, le=60)
    write_termination: str | None = None
    read_termination: str | None = None
    baudrate: int | None = Field(default=None, gt=0)
    identity: str | None = Field(default=None, description="regex the identity must match")
    poll_interval_s: float = Field(default=1.0, gt=0)
    limits: dict[str, tuple[float, float]] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("driver")
    @classmethod
    def _known_driver(cls, v: str) -> str:
        from drivers import DRIVERS

        if v not in DRIVERS:
            raise ValueError(f"unknown driver {v!r}; expected one of {', '.join(sorted(DRIVERS))}")
        return v

    @model_validator(mode="after")
    def _check_against_driver(self) -> InstrumentConfig:
        from drivers import DRIVERS

        cls = DRIVERS[self.driver]
        for key, (lo, hi) in self.limits.items():
            if key not in cls.DEFAULT_LIMITS:
                known = ", ".join(sorted(cls.DEFAULT_LIMITS))
                raise ValueError(f"limits.{key}: not a settable quantity of {cls.MODEL} ({known})")
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"limits.{key}: expected finite [min, max] with min <= max")
        for key in self.options:
            if key not in cls.OPTIONS:
                known = ", ".join(sorted(cls.OPTIONS)) or "none"
                raise ValueError(f"options.{key}: not an option of {cls.MODEL} (known: {known})")
        return self

    def build(self, name: str) -> Any:
        """The configured (unopened) driver instance for the instrument ``name``."""
        from drivers import make_instrument

        return make_instrument(
            name,
            self.driver,
            self.resource,
            backend=self.backend,
            timeout_s=self.timeout_s,
            write_termination=self.write_termination,
            read_termination=self.read_termination,
            baudrate=self.baudrate,
            limits=self.limits,
            identity=self.identity,
            options=self.options,
        )


class NodeConfig(BaseModel):
    """The config of one node's daemon (unknown top-level sections are kept for later parts)."""

    model_config = ConfigDict(extra="allow")

    node: str
    instruments: dict[str, InstrumentConfig] = Field(default_factory=dict)

    @field_validator("node")
    @classmethod
    def _node_name(cls, v: str) -> str:
        # caught here, so --check names it instead of a failed start
        return check_node_name(v)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; ConfigError names the file and what was wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_node_config(path: str | Path) -> NodeConfig:
    """Read and validate a node config YAML; ConfigError names the file and key path."""
    p = Path(path)
    data = read_yaml(p)
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_errors(p, exc)) from None
