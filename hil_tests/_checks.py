"""Steps several checks share: detectors-alive with the pump on, delay calibration."""

from __future__ import annotations

from typing import Any

import numpy as np

from coincidence import TagBatch
from controller.calibration import CalibrationError, find_channel_delays

from ._bench import Bench

DEFAULT_MAX_DELAY_PS = 20_000_000


def assert_detectors_alive(
    bench: Bench, batch: TagBatch, current_a: float, channels: list[int] | None = None
) -> np.ndarray:
    """Rates per channel; AssertionError naming every dead detector (of ``channels``, default
    all) and where to look."""
    rates = bench.rates_hz(batch)
    floor = bench.hil.min_singles_hz
    chans = sorted(bench.detector_names) if channels is None else sorted(channels)
    dead = [c for c in chans if rates[c] < floor]
    if dead:
        alive = [rates[c] for c in bench.detector_names if c not in dead]
        others = f"the others see {np.median(alive):.0f}/s median" if alive else "all are dead"
        lines = [
            f"detector {bench.detector_names[c]} (channel {c}): {rates[c]:.0f} counts/s with "
            f"the pump on at {current_a * 1e3:.1f} mA (need >= {floor:.0f}/s; {others}) - "
            f"{bench.detector_hint(c)}"
            for c in dead
        ]
        raise AssertionError("\n".join(lines))
    return rates


def calibrate_delays(bench: Bench) -> dict[str, Any]:
    """Pump on, capture, find every channel's delay (the controller's calibration)."""
    d = bench.hil.delay
    window_s = d.window_s if d else 0.2
    current = bench.pump()
    batch = bench.acquire(window_s)
    assert_detectors_alive(bench, batch, current)
    try:
        result = find_channel_delays(
            batch,
            bench.roles,
            bench.n_channels,
            max_delay_ps=d.max_delay_ps if d else DEFAULT_MAX_DELAY_PS,
            resolution_ps=d.bin_ps if d else 100,
        )
    except CalibrationError as exc:
        raise AssertionError(f"delay calibration failed: {exc}") from None
    return {"delays_ps": np.asarray(result.delays_ps, np.int64), "result": result, "batch": batch}


def delays(bench: Bench) -> dict[str, Any]:
    """The session's channel delays, calibrated once (a failure is re-raised for each caller)."""
    memo = bench.memo.get("delays")
    if memo is None:
        try:
            memo = calibrate_delays(bench)
        except AssertionError as exc:
            memo = exc
        finally:
            bench.restore_safe_state()
        bench.memo["delays"] = memo
    if isinstance(memo, AssertionError):
        raise AssertionError(f"needs the channel delays, whose calibration failed: {memo}")
    return memo
