"""The node config: pydantic models and ``load_node_config``.

Today it holds the ``instruments`` section; the other sections of the daemon
config (telemetry, acquisition, interlocks) belong in this module too, as more
fields of :class:`NodeConfig`. Errors name the file, the key path and what was
expected; a
misspelt key gets the nearest valid one suggested. Files are read with the one
qnet YAML loader (``configfile``): a repeated key is an error, not an override.

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

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from configfile import ConfigFileError, YamlDoc, load_mapping, nearest
from telemetry import check_node_name, error_input
from telemetry import format_validation_errors as format_validation_errors


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: ``what``, and where (file, line, key path)."""

    what: str
    file: str | None = None
    line: int | None = None
    key: str = ""

    @property
    def where(self) -> str:
        """``file:line: key.path`` (the parts that are known)."""
        place = "" if self.file is None else self.file
        if self.file is not None and self.line is not None:
            place += f":{self.line}"
        return ": ".join(x for x in (place, self.key) if x)

    def __str__(self) -> str:
        return f"{self.where}: {self.what}" if self.where else self.what


class ConfigError(ValueError):
    """A config file is unreadable or invalid; names the file, line and key path of each problem.

    ``problems`` holds them one by one (for ``qnet <command>: error: <what> (<where>)``);
    ``str()`` is one ``file:line: key.path: what`` line per problem.
    """

    def __init__(self, problems: str | Problem | Sequence[Problem]) -> None:
        if isinstance(problems, str):
            problems = [Problem(problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class InstrumentConfig(BaseModel):
    """One instrument: which driver, where it is, and its safe ranges.

    ``resource`` is a VISA resource name (``TCPIP::host::port::SOCKET``,
    ``USB0::...::INSTR``, ``ASRL...``), a pyserial port or URL (``/dev/ttyUSB0``,
    ``COM3``, ``socket://host:port``) or ``zmq://host:port``. ``limits`` maps a
    settable quantity of the driver to ``[min, max]`` in SI units, inside the model's
    hardware range (``HARDWARE_LIMITS``); quantities not listed get the driver's
    documented conservative default (``DEFAULT_LIMITS``).
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
            hint = nearest(v, DRIVERS)
            also = f"did you mean {hint}? " if hint else ""
            raise ValueError(f"unknown driver {v!r}; {also}expected one of {', '.join(DRIVERS)}")
        return v

    @field_validator("limits")
    @classmethod
    def _limits_inside_hardware(cls, v: dict[str, tuple[float, float]], info: Any) -> Any:
        """Each limit a known quantity, a finite [min, max], inside the hardware range.

        One ``key: what`` line per problem (the loader turns the key into the key path).
        """
        from drivers import DRIVERS

        driver = DRIVERS.get(info.data.get("driver", ""))
        if driver is None:
            return v  # the driver's own error says why
        problems = driver.limit_problems(v)
        if problems:
            lines = []
            for key, what in problems:
                hint = (
                    nearest(key, driver.hardware_limits())
                    if key not in driver.hardware_limits()
                    else None
                )
                lines.append(f"{key}: {'did you mean ' + hint + '? ' if hint else ''}{what}")
            raise ValueError("\n".join(lines))
        return v

    @field_validator("options")
    @classmethod
    def _known_options(cls, v: dict[str, Any], info: Any) -> Any:
        from drivers import DRIVERS

        driver = DRIVERS.get(info.data.get("driver", ""))
        if driver is None:
            return v
        lines = []
        for key in v:
            if key not in driver.OPTIONS:
                known = ", ".join(sorted(driver.OPTIONS)) or "none"
                hint = nearest(key, driver.OPTIONS)
                also = f"did you mean {hint}? " if hint else ""
                lines.append(f"{key}: {also}not an option of {driver.MODEL} (known: {known})")
        if lines:
            raise ValueError("\n".join(lines))
        return v

    def effective_limits(self) -> dict[str, tuple[float, float]]:
        """The ranges the built instrument enforces: driver defaults overlaid by ``limits``."""
        from drivers import DRIVERS

        return DRIVERS[self.driver].effective_limits(self.limits)

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


def read_config(path: Path, what: str = "config") -> YamlDoc:
    """Read a config file with the one YAML loader; ConfigError names the file and line."""
    try:
        return load_mapping(path, what)
    except ConfigFileError as exc:
        raise ConfigError(Problem(exc.what, exc.path, exc.line)) from None


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; ConfigError names the file, line and what was wrong."""
    return read_config(Path(path)).data


def validation_problems(
    exc: ValidationError,
    doc: YamlDoc | None,
    model: type[BaseModel] | None = None,
    prefix: Sequence[str] = (),
    path: str | Path | None = None,
) -> list[Problem]:
    """One :class:`Problem` per pydantic error, with the file line and a spelling hint.

    An unknown key names the nearest valid one of ``model`` at that place (difflib); a
    validator's ``key: what`` lines (limits, options) become one problem per key; the
    value found is shown unless it is (or holds) a secret.
    """
    file = str(path if path is not None else doc.path if doc is not None else "") or None
    out: list[Problem] = []
    for err in exc.errors():
        loc = [*prefix, *(str(p) for p in err["loc"])]
        msg = str(err["msg"])
        if err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            lines = msg.split("\n")
            given = err.get("input")
            if isinstance(given, dict) and all(
                ln.split(": ", 1)[0] in given for ln in lines if ": " in ln
            ):
                for ln in lines:
                    key, _, what = ln.partition(": ")
                    at = [*loc, key] if what else loc
                    out.append(_problem(what or ln, doc, file, at))
                continue
            out.append(_problem(msg, doc, file, loc))
            continue
        if err["type"] == "extra_forbidden" and model is not None:
            fields = _fields_at(model, [str(p) for p in err["loc"]][:-1])
            hint = nearest(loc[-1], fields)
            msg = f"unknown key {loc[-1]!r}" + (f"; did you mean {hint}?" if hint else "")
            if not hint and fields:
                msg += f" (valid here: {', '.join(sorted(fields))})"
            out.append(_problem(msg, doc, file, loc))
            continue
        got = error_input(err)
        out.append(_problem(f"{msg} (got {got})" if got else msg, doc, file, loc))
    return out


def _problem(what: str, doc: YamlDoc | None, file: str | None, loc: Sequence[str]) -> Problem:
    line = doc.line(loc) if doc is not None and str(doc.path) == file else None
    return Problem(" ".join(what.split()), file, line, ".".join(loc))


def _fields_at(model: type[BaseModel], loc: Sequence[str]) -> set[str]:
    """The field names valid at ``loc`` inside ``model`` (dict keys and list indices skipped)."""
    current: list[Any] = [model]
    for part in loc:
        nxt: list[Any] = []
        for tp in _expand(current):
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                field = tp.model_fields.get(part)
                if field is not None:
                    nxt.append(field.annotation)
            elif get_origin(tp) in (dict, list, tuple):
                args = get_args(tp)
                if args:
                    nxt.append(args[-1] if get_origin(tp) is not tuple else args[0])
        current = nxt or current  # a union's tag in the path: stay
    return {
        name
        for tp in _expand(current)
        if isinstance(tp, type) and issubclass(tp, BaseModel)
        for name in tp.model_fields
    }


def _expand(types: Iterable[Any]) -> list[Any]:
    """Unions (``X | None``) opened into their members."""
    out: list[Any] = []
    for tp in types:
        if get_origin(tp) in (Union, UnionType):
            out += _expand(get_args(tp))
        elif tp is not type(None):
            out.append(tp)
    return out


def load_node_config(path: str | Path) -> NodeConfig:
    """Read and validate a node config YAML; ConfigError names the file, line and key path."""
    p = Path(path)
    doc = read_config(p, "node config")
    try:
        return NodeConfig.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, doc, NodeConfig)) from None


def secret_file_problems(model: BaseModel, prefix: str = "") -> list[tuple[str, str]]:
    """Every file a config refers to for a secret or TLS that cannot be used, as (key, what).

    Walks the validated config for :class:`telemetry.Secret` entries with a ``file`` and for
    TLS settings' ``ca_file``/``cert_file``/``key_file``: each must be a readable, non-empty
    file, or ``qnet run --check`` would pass a config that fails only when the daemon connects.
    A secret's value is never part of the message. Paths are read as the daemon reads them
    (relative ones from the current directory).
    """
    from telemetry import Secret, SettingsError, TlsSettings

    out: list[tuple[str, str]] = []

    def check(key: str, path: Path, what: str) -> None:
        if not path.is_file():
            cwd = "" if path.is_absolute() else " (relative to the current directory)"
            out.append((key, f"the {what} file {str(path)!r}{cwd} does not exist"))
        elif not os.access(path, os.R_OK):
            out.append((key, f"the {what} file {str(path)!r} is not readable"))

    def walk(key: str, value: Any) -> None:
        if isinstance(value, Secret):
            if value.file is not None:
                check(f"{key}.file", value.file, "secret")
                if not out or not out[-1][0].startswith(f"{key}.file"):
                    try:
                        value.read(key)
                    except SettingsError:
                        out.append((f"{key}.file", f"the secret file {str(value.file)!r} is empty"))
            return
        if isinstance(value, TlsSettings):
            for name in ("ca_file", "cert_file", "key_file"):
                path = getattr(value, name)
                if path is not None:
                    check(f"{key}.{name}", path, name.replace("_file", "").upper())
            return
        if isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(f"{key}.{name}" if key else name, getattr(value, name))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{key}.{k}" if key else str(k), v)
        elif isinstance(value, list | tuple):
            for k, v in enumerate(value):
                walk(f"{key}.{k}", v)

    walk(prefix, model)
    return out


@dataclass(frozen=True)
class LimitRow:
    """One effective safe range of a configured instrument (for ``qnet run --check``)."""

    device: str
    quantity: str
    lo: float
    hi: float
    unit: str
    source: str  # "config" or "default"
    hardware: tuple[float, float]


def limit_rows(instruments: dict[str, InstrumentConfig]) -> list[LimitRow]:
    """The range each instrument enforces for each settable quantity, and where it comes from."""
    from drivers import DRIVERS, limit_unit

    rows = []
    for name, ic in instruments.items():
        cls = DRIVERS[ic.driver]
        hardware = cls.hardware_limits()
        for key, (lo, hi) in ic.effective_limits().items():
            source = "config" if key in ic.limits else "default"
            rows.append(LimitRow(name, key, lo, hi, limit_unit(key), source, hardware[key]))
    return rows
