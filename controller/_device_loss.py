"""Losing an instrument and getting it back: what was commanded, and what came back.

:class:`DeviceMemory` remembers, per device, the last known state of every setting:
read once when the device is first ready, then each value the daemon commanded. When
a device faults it is *lost* (the daemon runs the configured ``on_loss`` actions and
feeds the reading ``<device>.lost`` to the interlocks); when it is ready again the
daemon reads the settings back and :func:`differences` says what changed behind its
back (a power-cycled laser back at its default set-point). Per device the config
decides: ``report`` (log, event, health record), ``restore`` (set the remembered
values again, through the normal validation) or ``refuse`` (changes to that device are
refused until an operator sets each differing setting, which confirms it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: Relative tolerance when comparing a read-back number with the commanded one.
REL_TOL = 1e-6
#: Absolute tolerance (instrument units) for numbers near zero.
ABS_TOL = 1e-12


def same_value(commanded: Any, actual: Any) -> bool:
    """Whether a read-back value equals the commanded one (numbers within tolerance)."""
    if isinstance(commanded, bool) or isinstance(actual, bool):
        return bool(commanded) == bool(actual)
    if isinstance(commanded, int | float) and isinstance(actual, int | float):
        return math.isclose(float(commanded), float(actual), rel_tol=REL_TOL, abs_tol=ABS_TOL)
    return bool(commanded == actual)


@dataclass(frozen=True)
class Difference:
    """One setting that came back other than it was left."""

    device: str
    setting: str
    expected: Any
    actual: Any

    def describe(self) -> str:
        """``pump_laser.current_setpoint_a is 0.05, was commanded 0.055``."""
        return f"{self.device}.{self.setting} is {self.actual!r}, was commanded {self.expected!r}"


def differences(device: str, expected: dict[str, Any], actual: dict[str, Any]) -> list[Difference]:
    """The settings of ``expected`` whose read-back value in ``actual`` differs (in order)."""
    return [
        Difference(device, k, v, actual[k])
        for k, v in expected.items()
        if k in actual and not same_value(v, actual[k])
    ]


@dataclass
class DeviceMemory:
    """Last known settings per device, which devices are lost, which refuse changes."""

    known: dict[str, dict[str, Any]] = field(default_factory=dict)
    lost: set[str] = field(default_factory=set)
    refused: dict[str, dict[str, Difference]] = field(default_factory=dict)

    def remember(self, device: str, setting: str, value: Any) -> None:
        """A value was set (commanded): expected from now on; confirms a refused difference."""
        self.known.setdefault(device, {})[setting] = value
        pending = self.refused.get(device)
        if pending is not None:
            pending.pop(setting, None)
            if not pending:
                del self.refused[device]

    def baseline(self, device: str, values: dict[str, Any]) -> None:
        """The first read of a device: its settings as found (commanded values win)."""
        mine = self.known.setdefault(device, {})
        for k, v in values.items():
            mine.setdefault(k, v)

    def refusal(self, device: str, setting: str | None) -> str | None:
        """Why a change of ``device`` is refused now (None: allowed).

        Setting one of the differing settings is allowed: that is the operator's
        confirmation of the value it should have.
        """
        pending = self.refused.get(device)
        if not pending or (setting is not None and setting in pending):
            return None
        what = "; ".join(d.describe() for d in pending.values())
        return (
            f"{device} came back in another state ({what}): changes refused until an "
            f"operator sets {', '.join(pending)} (on_reconnect: refuse)"
        )
