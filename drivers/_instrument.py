"""The base of every driver: one transport, one lock, identity check, limits and reconnect.

An :class:`Instrument` is synchronous and thread-safe: every exchange holds the
instrument's ``RLock``, so two worker threads never interleave a query. A
timeout or a broken connection marks the session dead; the next call (or an
explicit :meth:`Instrument.reconnect`) closes the session properly, reopens it
and re-verifies the identity, with exponential backoff between failed
attempts. Calls made while a backoff is pending fail fast with
:class:`ConnectionLost` instead of blocking. Nothing here ever touches another
instrument's session.
"""

from __future__ import annotations

import math
import numbers
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, TypeVar

import numpy as np

from ._errors import (
    ConnectionLost,
    IdentityMismatch,
    InstrumentError,
    InstrumentReportedError,
    InstrumentTimeout,
    LimitError,
)
from ._transport import Transport

R = TypeVar("R")

#: Unit of a limit key, from its SI suffix (``current_setpoint_a`` -> A); no suffix: a count.
_UNIT_SUFFIXES = {
    "_a": "A",
    "_v": "V",
    "_c": "degC",
    "_s": "s",
    "_m": "m",
    "_ps": "ps",
    "_hz": "Hz",
}


def limit_unit(key: str) -> str:
    """The unit of a settable quantity named with its SI suffix (empty for a plain count)."""
    for suffix, unit in sorted(_UNIT_SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if key.endswith(suffix):
            return unit
    return ""


def _qty(value: float, unit: str) -> str:
    """``value`` with its unit and an SI prefix for small magnitudes (3e-05 A -> ``30 uA``)."""
    if unit and unit != "degC" and value != 0 and abs(value) < 1:
        for prefix, scale in (("m", 1e-3), ("u", 1e-6), ("n", 1e-9), ("p", 1e-12)):
            if abs(value) >= scale * (1 - 1e-9):
                return f"{value / scale:.6g} {prefix}{unit}"
    return f"{value:g} {unit}".rstrip()


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """Backoff between reconnect attempts: ``initial_s``, times ``factor`` each failure, capped."""

    initial_s: float = 0.1
    max_s: float = 5.0
    factor: float = 2.0


class Instrument:
    """Base class of the drivers (subclasses set the class attributes and add properties).

    Args:
        name: the configured name (appears in every error and log line).
        transport: an unopened :class:`Transport`.
        limits: safe ranges ``{key: (min, max)}`` in SI units, overriding ``DEFAULT_LIMITS``;
            an unknown key, or a range outside ``HARDWARE_LIMITS``, is refused (ValueError)
            before anything is opened or sent.
        identity_pattern: regex the identity reply must match (default ``IDENTITY_PATTERN``).
        reconnect: backoff policy.
        options: driver-specific settings (documented per driver in ``OPTIONS``).
    """

    MODEL: ClassVar[str] = ""
    IDN_QUERY: ClassVar[str] = "*IDN?"
    IDENTITY_PATTERN: ClassVar[str] = ""
    WRITE_TERMINATION: ClassVar[str] = "\n"
    READ_TERMINATION: ClassVar[str] = "\n"
    BAUDRATE: ClassVar[int] = 9600
    #: The model's own range of every settable quantity, SI units (from its manual): a
    #: configured limit must lie inside it. Empty: the same as ``DEFAULT_LIMITS``.
    HARDWARE_LIMITS: ClassVar[dict[str, tuple[float, float]]] = {}
    #: The range enforced when the config gives none: conservative (documented per driver)
    #: where a value inside the hardware range can still harm what is attached, else the
    #: hardware range. Same keys as ``HARDWARE_LIMITS``; configs narrow or move them.
    DEFAULT_LIMITS: ClassVar[dict[str, tuple[float, float]]] = {}
    #: Driver-specific options and their defaults.
    OPTIONS: ClassVar[dict[str, Any]] = {}
    #: SCPI error-queue query; None if the instrument has none.
    ERROR_QUERY: ClassVar[str | None] = None

    def __init__(
        self,
        name: str,
        transport: Transport,
        *,
        limits: Mapping[str, tuple[float, float]] | None = None,
        identity_pattern: str | None = None,
        reconnect: ReconnectPolicy | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.transport = transport
        problems = self.limit_problems(limits or {})
        if problems:
            raise ValueError("; ".join(f"{name}: limit {key!r}: {what}" for key, what in problems))
        self.limits: dict[str, tuple[float, float]] = self.effective_limits(limits or {})
        self.options: dict[str, Any] = dict(self.OPTIONS)
        for key, value in (options or {}).items():
            if key not in self.OPTIONS:
                known = ", ".join(sorted(self.OPTIONS)) or "none"
                raise ValueError(
                    f"{name}: unknown option {key!r} for {self.MODEL} (known: {known})"
                )
            self.options[key] = value
        self.identity_pattern = identity_pattern or self.IDENTITY_PATTERN
        self.policy = reconnect or ReconnectPolicy()
        self.lock = threading.RLock()
        self.identity: str | None = None
        #: Successful re-opens after an earlier successful connection (the first one is not
        #: counted), whether explicit (:meth:`reconnect`) or automatic after a failure.
        self.reconnects = 0
        self._alive = False
        self._connected_once = False
        self._backoff_s = self.policy.initial_s
        self._next_attempt = 0.0
        self._last_error: InstrumentError | None = None

    # -- limits of the class ---------------------------------------------------------
    @classmethod
    def hardware_limits(cls) -> dict[str, tuple[float, float]]:
        """The model's hardware range of each settable quantity, SI units."""
        return dict(cls.HARDWARE_LIMITS or cls.DEFAULT_LIMITS)

    @classmethod
    def limit_problems(cls, limits: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Why configured ``limits`` cannot be used, as ``(key, what)``; empty when they can.

        A key must be a settable quantity of the model, its range a finite ``[min, max]`` with
        min <= max, and inside the model's hardware range: a config cannot widen what the
        hardware takes (a 5 A limit on a 1.5 A laser controller is refused here).
        """
        hardware = cls.hardware_limits()
        out: list[tuple[str, str]] = []
        for key, pair in limits.items():
            if key not in hardware:
                known = ", ".join(sorted(hardware)) or "none"
                out.append((key, f"not a settable quantity of {cls.MODEL} (known: {known})"))
                continue
            try:
                lo, hi = (float(x) for x in pair)
            except (TypeError, ValueError):
                out.append((key, f"expected [min, max] as two numbers, got {pair!r}"))
                continue
            unit = limit_unit(key)
            if not (math.isfinite(lo) and math.isfinite(hi)):
                out.append((key, f"min and max must be finite numbers, got [{lo:g}, {hi:g}]"))
            elif lo > hi:
                out.append((key, f"min {_qty(lo, unit)} is above max {_qty(hi, unit)} (reversed?)"))
            else:
                hw_lo, hw_hi = hardware[key]
                if hi > hw_hi:
                    out.append(
                        (
                            key,
                            f"max {_qty(hi, unit)} is above the {cls.MODEL} hardware maximum "
                            f"{_qty(hw_hi, unit)}",
                        )
                    )
                if lo < hw_lo:
                    out.append(
                        (
                            key,
                            f"min {_qty(lo, unit)} is below the {cls.MODEL} hardware minimum "
                            f"{_qty(hw_lo, unit)}",
                        )
                    )
        return out

    @classmethod
    def effective_limits(
        cls, limits: Mapping[str, tuple[float, float]]
    ) -> dict[str, tuple[float, float]]:
        """The ranges an instance enforces: ``DEFAULT_LIMITS`` overlaid by the configured ones.

        Call :meth:`limit_problems` first; this does not check.
        """
        out = dict(cls.DEFAULT_LIMITS)
        for key, (lo, hi) in limits.items():
            out[key] = (float(lo), float(hi))
        return out

    # -- session ---------------------------------------------------------------------
    def connect(self) -> str:
        """Open the session and check the identity; returns the identity string."""
        with self.lock:
            self._open_and_verify()
            return str(self.identity)

    def reconnect(self) -> str:
        """Close and reopen now (ignoring any pending backoff); re-verifies the identity."""
        with self.lock:
            self.transport.close()
            self._open_and_verify()
            return str(self.identity)

    def close(self) -> None:
        """Close the session; idempotent."""
        with self.lock:
            self._alive = False
            self.transport.close()

    @property
    def connected(self) -> bool:
        """Whether the session is open and believed healthy."""
        return self._alive

    def __enter__(self) -> Instrument:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open_and_verify(self) -> None:
        """Open, check the identity, run the connect hook; counts a re-open in ``reconnects``."""
        self._alive = False
        was_connected = self._connected_once
        try:
            self.transport.open()
            idn = self.transport.query(self.IDN_QUERY).strip()
            if self.identity_pattern and not re.search(self.identity_pattern, idn):
                raise IdentityMismatch(
                    self.name,
                    self.IDN_QUERY,
                    f"expected a {self.MODEL} (identity matching {self.identity_pattern!r}), "
                    f"got {idn!r}",
                )
            self.identity = idn
            self._alive = True
            self._on_connect()
            self._connected_once = True  # only a fully set-up session counts as a connection
            if was_connected:
                self.reconnects += 1
        except InstrumentError as exc:
            self._alive = False
            self.transport.close()
            self._last_error = exc
            raise
        self._backoff_s = self.policy.initial_s
        self._next_attempt = 0.0

    def _on_connect(self) -> None:
        """Hook run (under the lock) after each successful identity check, e.g. set formats."""

    def _ensure(self, command: str) -> None:
        if self._alive:
            return
        now = time.monotonic()
        if now < self._next_attempt:
            why = self._last_error.detail if self._last_error else "not connected"
            raise ConnectionLost(
                self.name,
                command,
                f"session down ({why}); next reconnect attempt in {self._next_attempt - now:.2f} s",
            )
        try:
            self.transport.close()
            self._open_and_verify()
        except InstrumentError:
            self._next_attempt = time.monotonic() + self._backoff_s
            self._backoff_s = min(self.policy.max_s, self._backoff_s * self.policy.factor)
            raise

    def _exchange(self, command: str, fn: Callable[[], R]) -> R:
        with self.lock:
            self._ensure(command)
            try:
                return fn()
            except (ConnectionLost, InstrumentTimeout) as exc:
                # The byte stream may now be out of step (a late reply): resync by reopening.
                self._alive = False
                self._last_error = exc
                self.transport.close()
                self._next_attempt = 0.0
                raise

    # -- exchanges -----------------------------------------------------------------------
    def write(self, command: str) -> None:
        """Send one command (reconnecting first if the session is down)."""
        self._exchange(command, lambda: self.transport.write(command))

    def query(self, command: str) -> str:
        """Send one query and return its reply line."""
        return self._exchange(command, lambda: self.transport.query(command))

    def write_checked(self, command: str) -> None:
        """Send a set command, then read the error queue (if any) and raise what it reports."""
        with self.lock:
            self.write(command)
            self.check_errors(command)

    def check_errors(self, command: str | None = None) -> None:
        """Drain the SCPI error queue; raise InstrumentReportedError naming ``command``."""
        if self.ERROR_QUERY is None:
            return
        errors: list[str] = []
        with self.lock:
            for _ in range(16):
                reply = self.query(self.ERROR_QUERY).strip()
                code = reply.split(",", 1)[0].strip().lstrip("+")
                if code in ("0", ""):
                    break
                errors.append(reply)
        if errors:
            raise InstrumentReportedError(self.name, command, "; ".join(errors))

    # -- limits ----------------------------------------------------------------------------
    def check_limit(self, key: str, value: float, command: str) -> float:
        """``value`` as a float if inside the safe range ``key``; else LimitError (nothing sent)."""
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
            raise LimitError(self.name, command, f"{key} must be a number, got {value!r}")
        if key not in self.limits:
            raise LimitError(self.name, command, f"no safe range configured for {key}")
        lo, hi = self.limits[key]
        v = float(value)
        if not math.isfinite(v):
            raise LimitError(self.name, command, f"{key} = {v} is not a finite number")
        if not lo <= v <= hi:
            raise LimitError(
                self.name, command, f"{key} = {v:g} is outside the safe range [{lo:g}, {hi:g}]"
            )
        return v

    def round_into_limit(self, key: str, wire: float, scale: float, command: str) -> int:
        """Round a wire value to an integer that still lies inside the safe range ``key``."""
        lo, hi = self.limits[key]
        tol = 1e-9 * max(abs(lo), abs(hi))  # float noise of the unit conversion only
        w = round(wire)
        if w / scale < lo - tol:
            w = math.ceil(lo * scale - 1e-6)
        if w / scale > hi + tol:
            w = math.floor(hi * scale + 1e-6)
        if not lo - tol <= w / scale <= hi + tol:
            raise LimitError(
                self.name, command, f"no integer wire value of {key} in [{lo:g}, {hi:g}]"
            )
        return int(w)

    # -- overview -----------------------------------------------------------------------------
    def readings(self) -> dict[str, Any]:
        """A few key readings for overviews (``qnet devices``); subclasses extend."""
        return {}
