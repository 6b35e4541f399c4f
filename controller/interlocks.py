"""The interlock rule engine: readings in, actions and events out (pure, no I/O).

Each rule watches one named reading (``"max_singles_rate_hz"``,
``"snspd_bias.latched"``, ``"pump_laser.tec_temperature_c"``, ``"qber"``...)
and has two thresholds, so it trips and recovers with hysteresis:

* ``above``: trips when the value exceeds ``trip_above``, clears once it falls
  below ``clear_below`` (<= ``trip_above``);
* ``outside``: trips when the value leaves ``[min, max]``, clears once it is back
  inside ``[min + hysteresis, max - hysteresis]``;
* ``flag``: trips while the value is true, clears when it is false.

A rule trips only after ``persist`` consecutive offending samples. On a trip
the rule's ``actions`` are emitted (and re-emitted every ``repeat_s`` while it
stays tripped, e.g. a latch reset that did not take); on recovery its
``on_clear`` actions. A missing or non-finite reading changes nothing. Every
trip and clear is an :class:`InterlockEvent` the daemon logs and publishes.
Actions are plain requests (device + setting/value or device + action) that
the daemon sends through the same validation as operator commands, so an
interlock can never push an instrument outside its safe limits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Reading = float | int | bool | None


class ActionSpec(BaseModel):
    """One thing to do: set ``setting`` of ``device`` to ``value``, or call its ``action``.

    ``device: daemon`` addresses the daemon itself (actions ``pause_key``,
    ``resume_key``, ``compensate``, ``calibrate``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field(min_length=1)
    setting: str | None = None
    action: str | None = None
    value: Any = None

    @model_validator(mode="after")
    def _one_of(self) -> ActionSpec:
        if (self.setting is None) == (self.action is None):
            raise ValueError("an interlock action needs exactly one of 'setting' or 'action'")
        if self.setting is not None and self.value is None:
            raise ValueError(f"setting {self.setting!r} needs a 'value'")
        return self

    def as_request(self) -> dict[str, Any]:
        """The action as a command request body (without id)."""
        body: dict[str, Any] = {"device": self.device}
        if self.setting is not None:
            body["setting"] = self.setting
            body["value"] = self.value
        else:
            body["action"] = self.action
            if self.value is not None:
                body["value"] = self.value
        return body


class InterlockRule(BaseModel):
    """One configurable interlock (see the module docstring for the kinds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reading: str = Field(min_length=1, description="name of the watched reading")
    kind: Literal["above", "outside", "flag"] = "above"
    trip_above: float | None = None
    clear_below: float | None = None
    min: float | None = None
    max: float | None = None
    hysteresis: float = Field(0.0, ge=0.0)
    persist: int = Field(1, ge=1, description="consecutive offending samples before a trip")
    repeat_s: float | None = Field(None, gt=0, description="re-emit actions while tripped")
    enabled: bool = True
    device: str | None = Field(None, description="device named in events (for the log)")
    actions: tuple[ActionSpec, ...] = ()
    on_clear: tuple[ActionSpec, ...] = ()

    @model_validator(mode="after")
    def _thresholds(self) -> InterlockRule:
        if self.kind == "above":
            if self.trip_above is None:
                raise ValueError("kind 'above' needs trip_above")
            if self.clear_below is not None and self.clear_below > self.trip_above:
                raise ValueError(
                    f"clear_below ({self.clear_below}) must be <= trip_above ({self.trip_above})"
                )
        elif self.kind == "outside":
            if self.min is None or self.max is None:
                raise ValueError("kind 'outside' needs min and max")
            if not self.min + 2 * self.hysteresis <= self.max:
                raise ValueError(
                    f"need min + 2 * hysteresis <= max, got min={self.min}, max={self.max}, "
                    f"hysteresis={self.hysteresis}"
                )
        return self

    def offending(self, value: float) -> bool:
        """Whether ``value`` should trip the rule."""
        if self.kind == "above":
            return value > float(self.trip_above)  # type: ignore[arg-type]
        if self.kind == "outside":
            return not float(self.min) <= value <= float(self.max)  # type: ignore[arg-type]
        return bool(value)

    def recovered(self, value: float) -> bool:
        """Whether ``value`` lets a tripped rule clear (hysteresis applied)."""
        if self.kind == "above":
            limit = self.trip_above if self.clear_below is None else self.clear_below
            return value < float(limit)  # type: ignore[arg-type]
        if self.kind == "outside":
            lo = float(self.min) + self.hysteresis  # type: ignore[arg-type]
            hi = float(self.max) - self.hysteresis  # type: ignore[arg-type]
            return lo <= value <= hi
        return not bool(value)

    def describe(self, value: float) -> str:
        """A human reason for a trip at ``value``."""
        if self.kind == "above":
            return f"{self.reading} = {value:.6g} above {self.trip_above:.6g}"
        if self.kind == "outside":
            return f"{self.reading} = {value:.6g} outside [{self.min:.6g}, {self.max:.6g}]"
        return f"{self.reading} is set"


@dataclass(frozen=True)
class InterlockEvent:
    """A trip, a clear or a repeat of one interlock, with what the engine asked to do."""

    interlock: str
    event: Literal["trip", "clear", "repeat"]
    reason: str
    device: str | None
    time_s: float
    actions: tuple[ActionSpec, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (logs, status replies)."""
        return {
            "interlock": self.interlock,
            "event": self.event,
            "reason": self.reason,
            "device": self.device,
            "time_s": self.time_s,
            "actions": [a.as_request() for a in self.actions],
        }


@dataclass
class _State:
    tripped: bool = False
    streak: int = 0
    last_emit_s: float = 0.0
    last_value: float | None = None
    trips: int = 0


@dataclass
class InterlockEngine:
    """Evaluate every enabled rule on a set of readings; returns the transitions."""

    rules: Mapping[str, InterlockRule]
    _state: dict[str, _State] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._state = {name: _State() for name in self.rules}

    def evaluate(self, readings: Mapping[str, Reading], now_s: float) -> list[InterlockEvent]:
        """Apply the readings; return the trip/clear/repeat events in rule order."""
        events: list[InterlockEvent] = []
        for name, rule in self.rules.items():
            if not rule.enabled or rule.reading not in readings:
                continue
            raw = readings[rule.reading]
            if raw is None:
                continue
            value = float(raw)
            if not math.isfinite(value):
                continue
            st = self._state[name]
            st.last_value = value
            if not st.tripped:
                st.streak = st.streak + 1 if rule.offending(value) else 0
                if st.streak >= rule.persist:
                    st.tripped, st.streak, st.last_emit_s = True, 0, now_s
                    st.trips += 1
                    events.append(
                        InterlockEvent(
                            name, "trip", rule.describe(value), rule.device, now_s, rule.actions
                        )
                    )
            elif rule.recovered(value):
                st.tripped = False
                events.append(
                    InterlockEvent(
                        name,
                        "clear",
                        f"{rule.reading} = {value:.6g} back in range",
                        rule.device,
                        now_s,
                        rule.on_clear,
                    )
                )
            elif rule.repeat_s is not None and now_s - st.last_emit_s >= rule.repeat_s:
                st.last_emit_s = now_s
                events.append(
                    InterlockEvent(
                        name, "repeat", rule.describe(value), rule.device, now_s, rule.actions
                    )
                )
        return events

    def active(self) -> list[str]:
        """Names of the tripped interlocks."""
        return [n for n, s in self._state.items() if s.tripped]

    def status(self) -> dict[str, dict[str, Any]]:
        """Per rule: enabled, tripped, trip count and the last value seen."""
        return {
            n: {
                "enabled": self.rules[n].enabled,
                "tripped": s.tripped,
                "trips": s.trips,
                "reading": self.rules[n].reading,
                "last_value": s.last_value,
            }
            for n, s in self._state.items()
        }

    def readings_needed(self) -> Sequence[str]:
        """The reading names the enabled rules watch."""
        return sorted({r.reading for r in self.rules.values() if r.enabled})
