"""Meadowlark Optics D3050 four-channel liquid-crystal controller as the polarization controller.

Each channel drives one liquid-crystal variable retarder; a chain of them is
the polarization controller, so the per-element setpoint is the channel's
drive voltage (0-10 V).

Command set: Meadowlark Optics "D3050 Four Channel Digital Interface, User
Manual", section "Serial Command Set" (RS-232 / USB virtual COM, 38400 8N1,
commands end in CR, replies end in CR LF): ``ver:?`` (identity),
``ld:<ch>,<counts>`` and ``ld:<ch>,?`` (drive level, counts = volts * 6553.5),
``ldd:?`` (all four levels) and ``tmp:?`` (temperature, counts * 500 / 65535 K).
A set is acknowledged by echoing the command line back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from ._errors import LimitError, UnexpectedReply
from ._instrument import Instrument

COUNTS_PER_V = 6553.5


class MeadowlarkD3050(Instrument):
    """Polarization controller: one voltage setpoint per liquid-crystal element (1-4)."""

    MODEL = "Meadowlark D3050"
    IDN_QUERY = "ver:?"
    IDENTITY_PATTERN = r"(?i)D3050"
    WRITE_TERMINATION = "\r"
    READ_TERMINATION = "\r\n"
    BAUDRATE = 38400
    N_ELEMENTS = 4
    #: The controller's drive range, 0-10 V per channel (manual). Liquid-crystal cells are
    #: rated for the controller's full range, so unconfigured the hardware range applies.
    HARDWARE_LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "element_voltage_v": (0.0, 10.0),
        **{f"element{k}_voltage_v": (0.0, 10.0) for k in range(1, 5)},
    }
    DEFAULT_LIMITS: ClassVar[dict[str, tuple[float, float]]] = HARDWARE_LIMITS

    @classmethod
    def limit_problems(cls, limits: Mapping[str, Any]) -> list[tuple[str, str]]:
        """As for every driver, and an element's range must overlap ``element_voltage_v``."""
        out = super().limit_problems(limits)
        if out:
            return out
        common_lo, common_hi = cls.effective_limits({})["element_voltage_v"]
        if "element_voltage_v" in limits:
            common_lo, common_hi = (float(x) for x in limits["element_voltage_v"])
        for k in range(1, cls.N_ELEMENTS + 1):
            key = f"element{k}_voltage_v"
            if key in limits:
                lo, hi = (float(x) for x in limits[key])
                if lo > common_hi or hi < common_lo:
                    out.append(
                        (
                            key,
                            f"[{lo:g}, {hi:g}] V does not overlap element_voltage_v "
                            f"[{common_lo:g}, {common_hi:g}] V: no voltage would be allowed",
                        )
                    )
        return out

    @classmethod
    def effective_limits(
        cls, limits: Mapping[str, tuple[float, float]]
    ) -> dict[str, tuple[float, float]]:
        """An element without its own ``elementN_voltage_v`` takes ``element_voltage_v``.

        Each set is checked against both (:meth:`format_setpoint`), so the per-element range
        shown (``qnet run --check``, the command surface) is the one really enforced.
        """
        out = super().effective_limits(limits)  # limit_problems refuses disjoint ranges
        common_lo, common_hi = out["element_voltage_v"]
        for k in range(1, cls.N_ELEMENTS + 1):
            lo, hi = out[f"element{k}_voltage_v"]
            out[f"element{k}_voltage_v"] = (max(lo, common_lo), min(hi, common_hi))
        return out

    def _element(self, element: int, command: str) -> int:
        if isinstance(element, bool) or not isinstance(element, int):
            raise LimitError(self.name, command, f"element must be an int 1..4, got {element!r}")
        if not 1 <= element <= self.N_ELEMENTS:
            raise LimitError(self.name, command, f"element {element} is not in 1..4")
        return element

    def format_setpoint(self, element: int, voltage_v: float) -> str:
        """The exact command for a setpoint, after both limit checks (raises LimitError)."""
        cmd = f"ld:{element},<counts>"
        self._element(element, cmd)
        v = self.check_limit("element_voltage_v", voltage_v, cmd)
        self.check_limit(f"element{element}_voltage_v", v, cmd)
        counts = round(v * COUNTS_PER_V)
        for key in ("element_voltage_v", f"element{element}_voltage_v"):
            counts = self.round_into_limit(key, counts, COUNTS_PER_V, cmd)
        return f"ld:{element},{counts}"

    def set_voltage(self, element: int, voltage_v: float) -> None:
        """Set one element's drive voltage, V; the controller's echo is checked."""
        cmd = self.format_setpoint(element, voltage_v)
        reply = self.query(cmd).strip()
        if reply != cmd:
            raise UnexpectedReply(self.name, cmd, f"expected the echo {cmd!r}, got {reply!r}")

    def voltage(self, element: int) -> float:
        """One element's drive voltage, V."""
        cmd = f"ld:{self._element(element, 'ld:?')},?"
        reply = self.query(cmd).strip()
        try:
            head, counts = reply.split(",")
            if head != f"ld:{element}":
                raise ValueError("wrong element")
            return int(counts) / COUNTS_PER_V
        except ValueError:
            raise UnexpectedReply(self.name, cmd, f"cannot parse {reply!r}") from None

    @property
    def setpoints(self) -> list[float]:
        """All element voltages, V, element 1 first."""
        reply = self.query("ldd:?").strip()
        try:
            head, body = reply.split(":", 1)
            values = [int(x) / COUNTS_PER_V for x in body.split(",")]
            if head != "ldd" or len(values) != self.N_ELEMENTS:
                raise ValueError("wrong shape")
        except ValueError:
            raise UnexpectedReply(self.name, "ldd:?", f"cannot parse {reply!r}") from None
        return values

    @setpoints.setter
    def setpoints(self, volts: list[float]) -> None:
        """Set every element (all checked before the first is sent)."""
        if len(volts) != self.N_ELEMENTS:
            raise LimitError(
                self.name, "ld:", f"need {self.N_ELEMENTS} setpoints, got {len(volts)}"
            )
        for k, v in enumerate(volts, start=1):
            self.format_setpoint(k, v)
        with self.lock:
            for k, v in enumerate(volts, start=1):
                self.set_voltage(k, v)

    @property
    def temperature_k(self) -> float:
        """Temperature of a temperature-controlled LC cell, K."""
        reply = self.query("tmp:?").strip()
        try:
            head, counts = reply.split(":", 1)
            value = int(counts) * 500.0 / 65535.0
            if head != "tmp" or not math.isfinite(value):
                raise ValueError("wrong head")
        except ValueError:
            raise UnexpectedReply(self.name, "tmp:?", f"cannot parse {reply!r}") from None
        return value

    def readings(self) -> dict[str, Any]:
        """The element voltages."""
        return {"setpoints_v": [round(v, 4) for v in self.setpoints]}
