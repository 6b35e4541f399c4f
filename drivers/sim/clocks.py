"""The taggers' free-running clocks of the emulated two-site testbed.

A :class:`TaggerClock` maps true (simulated) time to one tagger's reading:
``shift + offset + t * (1 + ppm * 1e-6) + w(t)``, with ``w`` a random walk of the
phase (``physics.SiteClock`` documents the model). The walk is drawn at knots
every ``knot_ps`` of true time from a seeded generator, in order, and
interpolated linearly between them, so the same seed gives the same readings
whichever batches ask, and the reading never runs backwards.
"""

from __future__ import annotations

import math
from typing import overload

import numpy as np

from .physics import SiteClock

#: Knots of the phase walk kept for readings of past times (at 10 ms: about 22 min).
MAX_KNOTS = 1 << 17


class TaggerClock:
    """One tagger's clock: true time (ps) -> tagger reading (ps), monotone.

    Args:
        clock: offset, frequency offset and phase noise against true time.
        shift_ps: common shift added to every reading (keeps readings >= 0).
        knot_ps: spacing of the phase walk's knots, ps.
        seed: seed of the phase walk.
    """

    def __init__(self, clock: SiteClock, shift_ps: int, knot_ps: int, seed: int) -> None:
        if knot_ps <= 0:
            raise ValueError(f"knot_ps must be > 0, got {knot_ps}")
        self.clock = clock
        self.offset_ps = int(shift_ps) + int(clock.offset_ps)
        self.rate = float(clock.ppm) * 1e-6
        self.knot_ps = int(knot_ps)
        self._sigma = float(clock.phase_noise_ps_per_sqrt_s) * math.sqrt(knot_ps * 1e-12)
        self._rng = np.random.default_rng([seed & 0xFFFFFFFF, 0xC10C])
        self._first = 0  # index of _walk[0]
        self._walk = np.zeros(1, np.float64)  # w at knots _first, _first + 1, ...

    @property
    def noisy(self) -> bool:
        """True when the clock has phase noise."""
        return self._sigma > 0.0

    def _extend(self, last_knot: int) -> None:
        have = self._first + self._walk.size - 1
        if last_knot <= have:
            return
        steps = self._rng.normal(0.0, self._sigma, size=last_knot - have)
        walk = np.concatenate([self._walk, self._walk[-1] + np.cumsum(steps)])
        if walk.size > MAX_KNOTS:
            drop = walk.size - MAX_KNOTS
            walk = walk[drop:]
            self._first += drop
        self._walk = walk

    def walk_ps(self, t_ps: np.ndarray) -> np.ndarray:
        """The phase walk at true times ``t_ps`` (int64 ps), float ps."""
        t = np.asarray(t_ps, np.int64)
        if not self.noisy or t.size == 0:
            return np.zeros(t.shape, np.float64)
        k = np.floor_divide(t, self.knot_ps)
        self._extend(int(k.max()) + 1)
        if int(k.min()) < self._first:
            raise ValueError(
                f"clock reading asked for t = {int(t.min())} ps, older than the kept phase "
                f"walk (from {self._first * self.knot_ps} ps)"
            )
        i = k - self._first
        frac = (t - k * self.knot_ps).astype(np.float64) / self.knot_ps
        w = self._walk
        return w[i] + (w[i + 1] - w[i]) * frac

    @overload
    def read(self, t_ps: int) -> int: ...
    @overload
    def read(self, t_ps: np.ndarray) -> np.ndarray: ...
    def read(self, t_ps: int | np.ndarray) -> int | np.ndarray:
        """The tagger's reading (int64 ps) at true time(s) ``t_ps``."""
        t = np.asarray(t_ps, dtype=np.int64)
        # one floor of the whole deviation: t + floor(x(t)) never decreases as t grows
        # (x changes by more than -1 per ps), two separate floors could
        dev = t.astype(np.float64) * self.rate
        if self.noisy:
            dev = dev + self.walk_ps(t)
        out = t + np.int64(self.offset_ps) + np.floor(dev).astype(np.int64)
        return out if out.ndim else int(out)


def common_shift_ps(clocks: list[SiteClock], knot_ps: int) -> int:
    """Shift added to every tagger's reading so that none is ever negative, ps.

    The most negative offset, plus ten standard deviations of the largest phase
    walk over its first two knots (later, true time outruns the walk).
    """
    lowest = min(int(c.offset_ps) for c in clocks)
    noise = max(float(c.phase_noise_ps_per_sqrt_s) for c in clocks)
    margin = math.ceil(10.0 * noise * math.sqrt(2 * knot_ps * 1e-12)) + (1 if noise else 0)
    return max(0, -lowest) + margin if (lowest < 0 or noise) else 0


__all__ = ["MAX_KNOTS", "TaggerClock", "common_shift_ps"]
