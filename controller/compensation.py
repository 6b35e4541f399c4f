"""Polarization compensation: drive the controller's setpoints with the live QBER as the cost.

The same idea as S-Fifteen's QKDServer (its paddle and LCVR controllers):
the link's QBER is measured at a setpoint, one element at a time is nudged up
and down, a move that lowers the QBER is kept, and the step shrinks when no
element improves. With ``scan_points`` set, each round starts with a coarse
scan of every element over its whole range (liquid-crystal retarders are
periodic and nonlinear, so plain descent can stall in a local minimum); a
stalled round starts another scan. It stops as soon as the QBER is below the
target, after ``max_evaluations`` measurements, or (without scans) when the
step is below ``min_step``. With no element to move it measures the start once
and returns (reason ``"no elements"``) instead of looping.

Every proposed setpoint is clipped into the controller's safe range
(``limits``) before ``measure_qber`` is called, so the optimizer can never ask
for a value outside it. The optimizer is pure: the daemon supplies
``measure_qber(setpoints) -> float`` (apply, wait one window, read QBER).
A non-finite measurement counts as worse than anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class CompensationSettings(BaseModel):
    """Tuning of the optimizer (setpoint units of the controller, e.g. volts)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_qber: float = Field(0.03, gt=0.0, lt=0.5)
    initial_step: float = Field(0.5, gt=0.0)
    min_step: float = Field(0.01, gt=0.0)
    max_evaluations: int = Field(200, ge=1)
    elements: tuple[Annotated[int, Field(ge=0)], ...] | None = Field(
        None, min_length=1, description="indices of the setpoints to move (default: all)"
    )
    scan_points: int = Field(
        0, ge=0, le=1000, description="grid points per element of a coarse scan (0: no scan)"
    )


@dataclass
class CompensationResult:
    """Where the optimizer ended and how it got there."""

    setpoints: list[float]
    qber: float
    evaluations: int
    converged: bool
    reason: str
    history: list[tuple[list[float], float]] = field(default_factory=list)


def _clip(x: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, x))


def compensate(
    measure_qber: Callable[[list[float]], float],
    start: Sequence[float],
    limits: Sequence[tuple[float, float]],
    settings: CompensationSettings | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> CompensationResult:
    """Minimise ``measure_qber`` from ``start`` by bounded coordinate descent.

    Args:
        measure_qber: applies setpoints and returns the QBER measured there.
        start: the controller's current setpoints.
        limits: ``(min, max)`` per setpoint; nothing outside is ever proposed.
        settings: tuning; defaults to :class:`CompensationSettings`.
        should_stop: polled between measurements; True aborts (e.g. shutdown).
    """
    s = settings or CompensationSettings()
    if len(start) != len(limits):
        raise ValueError(f"{len(start)} setpoints but {len(limits)} limit pairs")
    for k, (lo, hi) in enumerate(limits):
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"limits[{k}] must be finite (min, max) with min <= max")
    elements = list(s.elements) if s.elements is not None else list(range(len(start)))
    for k in elements:
        if not 0 <= k < len(start):
            raise ValueError(f"element index {k} is outside 0..{len(start) - 1}")
    x = [_clip(float(v), lo, hi) for v, (lo, hi) in zip(start, limits, strict=True)]
    history: list[tuple[list[float], float]] = []

    def cost(point: list[float]) -> float:
        q = float(measure_qber(list(point)))
        history.append((list(point), q))
        return q if math.isfinite(q) else math.inf

    best = cost(x)

    def result(converged: bool, reason: str) -> CompensationResult:
        return CompensationResult(x, best, len(history), converged, reason, history)

    while True:
        # checked every round: a round that moves nothing must not spin forever
        if best < s.target_qber:
            return result(True, "below target")
        if not elements:
            return result(False, "no elements")
        if len(history) >= s.max_evaluations:
            return result(False, "max_evaluations reached")
        if should_stop is not None and should_stop():
            return result(False, "stopped")
        if s.scan_points >= 2:
            # coarse scan: each element over a grid of its range, keeping the best point
            for k in elements:
                lo, hi = limits[k]
                for j in range(s.scan_points):
                    if best < s.target_qber:
                        return result(True, "below target")
                    if len(history) >= s.max_evaluations:
                        return result(False, "max_evaluations reached")
                    if should_stop is not None and should_stop():
                        return result(False, "stopped")
                    trial = list(x)
                    trial[k] = lo + (hi - lo) * j / (s.scan_points - 1)
                    q = cost(trial)
                    if q < best:
                        x, best = trial, q
        step = s.initial_step
        while step >= s.min_step:
            if best < s.target_qber:
                return result(True, "below target")
            improved = False
            for k in elements:
                lo, hi = limits[k]
                for direction in (1.0, -1.0):
                    if len(history) >= s.max_evaluations:
                        return result(False, "max_evaluations reached")
                    if should_stop is not None and should_stop():
                        return result(False, "stopped")
                    trial = list(x)
                    trial[k] = _clip(x[k] + direction * step, lo, hi)
                    if trial[k] == x[k]:
                        continue
                    q = cost(trial)
                    if q < best:
                        x, best, improved = trial, q, True
                        if best < s.target_qber:
                            return result(True, "below target")
                        break
            if not improved:
                step /= 2.0
        if best < s.target_qber:
            return result(True, "below target")
        if s.scan_points < 2:
            return result(False, "step below min_step")
        # stuck in a local minimum: scan again from here (until max_evaluations)
