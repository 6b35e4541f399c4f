"""Link upkeep: keep one link's analysis aligned while the daemon runs.

Three jobs, each on raw tag captures from the acquisition:

* **calibration** (at start and on command): the channel delays from the
  correlation peaks (``calibration.find_channel_delays``) and, with two taggers,
  Bob's clock offset and drift (``calibration.fit_clock``);
* **drift tracking** (every ``track_every`` windows): the residual shift of Bob's
  channels, followed in the delays or, with two taggers, in the clock line;
* **polarization compensation** (when the QBER interlock trips or on command):
  the controller's set-points moved with the mean QBER as the cost
  (``compensation.compensate``).

The daemon composes it and hands it callables, not itself: ``capture`` is the
acquisition's, ``execute`` runs a validated request (so the compensation's moves
pass the same limits as an operator's), ``device_call`` reads a set-point,
``event`` records what happened, ``stopping`` says shutdown has begun (nothing new
starts), and ``light_hint`` explains a dark capture (laser off, bias at 0) with the
command that fixes it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np

from coincidence import DriftTracker, RoleMap, TagBatch

from ._daemon_config import DaemonConfig
from .acquisition import Acquisition, Windower, finite_or_none
from .calibration import (
    CalibrationError,
    find_channel_delays,
    fit_clock,
    format_with_uncertainty,
    no_light_error,
    pin_clock,
    track_shift,
)
from .commands import CommandError, DeviceSurface, ValidRequest, element_settings, validate_request
from .compensation import CompensationResult, compensate
from .merge import MergedTagSource

log = logging.getLogger("qnet.daemon")

#: Why a capture is refused once shutdown has begun (reply code ``device_unavailable``).
SHUTTING_DOWN = "the daemon is shutting down (safe state): nothing new is executed"

Event = Callable[[str, str, str | None], None]


class LinkUpkeep:
    """Calibration, drift tracking and compensation of the daemon's link (module docstring).

    ``calibration`` and ``compensation`` are the JSON-friendly states the daemon's
    status shows.
    """

    def __init__(
        self,
        cfg: DaemonConfig,
        windower: Windower,
        roles: RoleMap,
        surfaces: Mapping[str, DeviceSurface],
        *,
        acquisition: Callable[[], Acquisition | None],
        execute: Callable[[ValidRequest], Awaitable[Any]],
        device_call: Callable[[str, Callable[[Any], Any]], Awaitable[Any]],
        event: Event,
        stopping: Callable[[], bool],
        light_hint: Callable[[], Awaitable[str]],
    ) -> None:
        self.cfg = cfg
        self.windower = windower
        self.roles = roles
        self.surfaces = surfaces
        self._acquisition = acquisition
        self._execute = execute
        self._device_call = device_call
        self._event = event
        self._stopping = stopping
        self._light_hint = light_hint
        self.calibration: dict[str, Any] = {"state": "not run"}
        self.compensation: dict[str, Any] = {"state": "idle"}
        self._cal_lock = asyncio.Lock()
        self._comp_task: asyncio.Task[Any] | None = None
        self._comp_stop = threading.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._merger: MergedTagSource | None = None  # two taggers: Bob's clock map lives here
        self._clock: DriftTracker | None = None
        self._clock_pin_ps = 0.0  # offset left in the channel delays (see pin_clock)

    # -- lifecycle --
    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def calibrate_soon(self) -> None:
        """Calibrate in the background (at start); a failure is logged with its likely cause."""
        self._spawn(self._calibrate_at_start(), "qnet-calibration")

    def stop(self) -> list[asyncio.Task[Any]]:
        """Stop the compensation's loop and return the running tasks (the daemon cancels them)."""
        self._comp_stop.set()
        tasks = list(self._tasks)
        if self._comp_task is not None and not self._comp_task.done():
            tasks.append(self._comp_task)
        return tasks

    def on_window(self, index: int) -> None:
        """After window ``index``: check the drift every ``track_every`` windows."""
        cal = self.cfg.daemon.calibration
        if (
            cal.track
            and self.calibration.get("state") == "done"
            and index % cal.track_every == 0
            and not self._cal_lock.locked()
            and not self._stopping()
        ):
            self._spawn(self._track_drift(), "qnet-drift")

    def attach_merger(self, merged: MergedTagSource) -> None:
        """Follow Bob's clock in this two-tagger merger (re-applies the current clock map)."""
        self._merger = merged
        if self._clock is not None:
            merged.set_clock_map(1, pin_clock(self._clock.fit(), self._clock_pin_ps))

    # -- calibration --
    async def _calibrate_at_start(self) -> None:
        try:
            await self.calibrate()
        except CommandError as exc:
            log.error("calibration at start failed: %s", exc.message)

    async def capture(self, seconds: float) -> TagBatch:
        """``seconds`` of raw tags from the acquisition (CommandError if none arrive in time)."""
        if self._stopping():
            raise CommandError("device_unavailable", SHUTTING_DOWN)
        acq = self._acquisition()
        if acq is None:
            raise CommandError("not_configured", "this node has no acquisition section")
        cap = acq.capture(seconds)
        wall_budget = seconds * 3 + 10.0
        ok = await asyncio.to_thread(cap.done.wait, wall_budget)
        if not ok or cap.error:
            raise CommandError(
                "calibration_failed",
                cap.error
                or f"no {seconds} s of tags arrived within {wall_budget:.0f} s "
                f"(acquisition: {acq.state})",
            )
        return cap.batch()

    async def calibrate(self) -> dict[str, Any]:
        """Capture raw tags, find the channel delays and apply them from the next window."""
        cal = self.cfg.daemon.calibration
        acq = self.cfg.daemon.acquisition
        assert acq is not None
        async with self._cal_lock:
            self.calibration = {"state": "running", "started_s": time.time()}
            self._event("calibration", "started", None)
            try:
                batch = await self.capture(cal.capture_s)
                dark = no_light_error(batch, self.roles, "")
                if dark is not None:
                    raise CalibrationError(f"{dark} {await self._light_hint()}")
                merger = self._merger
                clock, pin = None, 0.0
                if merger is not None:  # two taggers: Bob's clock offset + drift first
                    clock, pin, batch = await asyncio.to_thread(
                        fit_clock,
                        batch,
                        self.roles,
                        merger.clock_map(1),
                        max_delay_ps=cal.max_delay_ps,
                        resolution_ps=cal.resolution_ps,
                        min_significance=cal.min_significance,
                        pin_ps=self._clock_pin_ps if self._clock is not None else None,
                    )
                result = await asyncio.to_thread(
                    find_channel_delays,
                    batch,
                    self.roles,
                    acq.n_channels,
                    max_delay_ps=cal.max_delay_ps,
                    resolution_ps=cal.resolution_ps,
                    min_significance=cal.min_significance,
                    previous_ps=self.windower.delays_ps,
                )
            except CalibrationError as exc:
                text = str(exc)
                if not text.startswith("no light"):
                    text = f"{text} {await self._light_hint()}".strip()
                return self._failed(text)
            except CommandError as exc:
                self._failed(exc.message, raise_=False)
                raise
            except Exception as exc:
                log.exception("calibration failed")
                return self._failed(f"{type(exc).__name__}: {exc}")
            self.windower.set_delays(result.delays_ps)
            self.calibration = {"state": "done", "finished_s": time.time(), **result.summary()}
            clock_text = ""
            if merger is not None and clock is not None:
                self._clock = DriftTracker.from_fit(
                    clock, max_delay_ps=cal.max_delay_ps, max_windows=64
                )
                self._clock_pin_ps = pin
                merger.set_clock_map(1, pin_clock(clock, pin))
                self.calibration["clock"] = clock_summary(clock)
                self._event("calibration", f"clock: {clock_summary(clock)}", None)
                clock_text = "; " + clock_text_of(clock)
            self._event("calibration", f"delays {result.describe()}", None)
            unresolved = f" (unresolved channels {list(result.unresolved)})" * bool(
                result.unresolved
            )
            log.info(
                "calibration done: delays %s%s%s",
                result.describe(),
                unresolved,
                clock_text,
            )
            return self.calibration

    def _failed(self, why: str, raise_: bool = True) -> dict[str, Any]:
        """Record a failed calibration; raise it as ``calibration_failed`` (``raise_``)."""
        self.calibration = {"state": "failed", "error": why}
        self._event("calibration", f"failed: {why}", None)
        if raise_:
            raise CommandError("calibration_failed", why) from None
        return self.calibration

    async def _track_drift(self) -> None:
        cal = self.cfg.daemon.calibration
        acq = self.cfg.daemon.acquisition
        if self._cal_lock.locked() or acq is None:
            return
        async with self._cal_lock:
            try:
                batch = await self.capture(min(0.5, acq.window_s))
            except CommandError:
                return
            delays = self.windower.delays_ps
            shift = await asyncio.to_thread(
                track_shift,
                batch,
                self.roles,
                delays,
                max_shift_ps=cal.track_max_shift_ps,
                resolution_ps=cal.resolution_ps,
                min_significance=cal.min_significance,
            )
            merger, clock = self._merger, self._clock
            if shift is not None and merger is not None and clock is not None:
                # two taggers: the residual is Bob's clock error; refit the clock line
                mid = 0.5 * (batch.begin_ps + batch.end_ps)
                now = clock.fit()
                k = now.drift_ppm * 1e-6
                clock.add_offset(mid, float(now.offset_at(mid)) + (1.0 + k) * shift)
                fit = clock.fit()
                merger.set_clock_map(1, pin_clock(fit, self._clock_pin_ps))
                self.calibration["clock"] = {**clock_summary(fit), "updates": clock.added_offsets}
                return
            if shift is None or abs(shift) < max(cal.resolution_ps, 10):
                return
            bob = list(self.roles.bob.values())
            delays[bob] += round(shift)
            self.windower.set_delays(delays)
            self.calibration["drift_corrections"] = self.calibration.get("drift_corrections", 0) + 1
            self._event("calibration", f"drift: Bob's delays moved by {shift:+.0f} ps", None)

    # -- compensation --
    def start_compensation(self) -> dict[str, Any]:
        """Start polarization compensation (no-op if it is already running)."""
        if self.cfg.daemon.compensation is None:
            raise CommandError("not_configured", "no compensation section in the daemon config")
        if self._comp_task is not None and not self._comp_task.done():
            return {"state": "running", "already": True}
        self._comp_stop.clear()
        self._comp_task = asyncio.create_task(self._compensate(), name="qnet-compensation")
        self.compensation = {"state": "running", "started_s": time.time()}
        return {"state": "started"}

    async def _compensate(self) -> None:
        comp = self.cfg.daemon.compensation
        acq = self.cfg.daemon.acquisition
        assert comp is not None and acq is not None
        device = comp.device
        surf = self.surfaces[device]
        names = element_settings(surf)
        self._event("compensation", f"started on {device}", device)
        try:
            start = [float(await self._device_call(device, surf.settings[n].getter)) for n in names]
        except Exception as exc:
            self.compensation = {"state": "failed", "error": f"cannot read setpoints: {exc}"}
            self._event("compensation", f"failed: {exc}", device)
            log.warning("compensation on %s failed: cannot read its set-points: %s", device, exc)
            return
        log.info(
            "compensation started on %s (target mean QBER %.2f %%, at most %d points)",
            device,
            100 * comp.target_qber,
            comp.max_evaluations,
        )
        limits = [surf.settings[n].limits or (0.0, 0.0) for n in names]
        loop = asyncio.get_running_loop()
        current = list(start)
        window_s = comp.window_s or acq.window_s

        def measure(x: list[float]) -> float:
            for k, v in enumerate(x):
                if v != current[k]:
                    body = {"id": "compensation", "device": device, "setting": names[k], "value": v}
                    vreq = validate_request(
                        body, self.surfaces, self.cfg.daemon.permissions, role="system"
                    )
                    asyncio.run_coroutine_threadsafe(self._execute(vreq), loop).result(10.0)
                    current[k] = v
            fut = asyncio.run_coroutine_threadsafe(self.capture(window_s), loop)
            batch = fut.result(window_s * 3 + 15)
            return self.qber_of(batch)

        t0 = time.monotonic()
        try:
            result: CompensationResult = await asyncio.to_thread(
                compensate, measure, start, limits, comp, self._comp_stop.is_set
            )
        except Exception as exc:
            self.compensation = {"state": "failed", "error": str(exc)}
            self._event("compensation", f"failed: {exc}", device)
            log.warning("compensation on %s failed: %s", device, exc)
            return
        self.compensation = {
            "state": "converged" if result.converged else "stopped",
            "reason": result.reason,
            "qber": finite_or_none(result.qber),
            "setpoints": [round(v, 4) for v in result.setpoints],
            "evaluations": result.evaluations,
            "finished_s": time.time(),
        }
        self._event(
            "compensation",
            f"{result.reason}: QBER {result.qber:.4f} after {result.evaluations} points",
            device,
        )
        log.info(
            "compensation %s on %s: mean QBER %s after %d points in %.1f s (%s); set-points %s",
            "converged" if result.converged else "stopped",
            device,
            _pct(result.qber),
            result.evaluations,
            time.monotonic() - t0,
            result.reason,
            [round(v, 3) for v in result.setpoints],
        )

    def qber_of(self, batch: TagBatch) -> float:
        """Mean of the two bases' QBER of a raw capture (nan with too few sifted counts)."""
        from coincidence import CoincidenceCounter, qber_from_matrix

        acq = self.cfg.daemon.acquisition
        assert acq is not None
        counter = CoincidenceCounter(
            acq.n_channels, acq.coincidence_window_ps, self.windower.delays_ps
        )
        counter.process(batch)
        rep = counter.result()
        if rep.duration_ps <= 0:
            return math.nan
        q = qber_from_matrix(rep.coincidences, rep.duration_s, self.roles)
        vals = [b.qber for b in (q.z, q.x) if b.sifted >= max(20, acq.min_sifted // 4)]
        return float(np.mean(vals)) if vals else math.nan


def clock_summary(fit: Any) -> dict[str, float]:
    """JSON-friendly digest of a ``ClockDrift`` (Bob's tagger vs Alice's)."""
    return {
        "offset0_ps": round(float(fit.offset0_ps), 1),
        "offset0_uncertainty_ps": finite_or_none(round(float(fit.offset0_uncertainty_ps), 1)),
        "drift_ppm": round(float(fit.drift_ppm), 6),
        "drift_uncertainty_ppm": finite_or_none(round(float(fit.drift_uncertainty_ppm), 6)),
        "residual_rms_ps": round(float(fit.residual_rms_ps), 1),
    }


def clock_text_of(fit: Any) -> str:
    """``clock fit: Bob - Alice offset 1 234.5 +- 0.8 ps, drift +0.1000 +- 0.0003 ppm, ...``."""
    offset = format_with_uncertainty(float(fit.offset0_ps), float(fit.offset0_uncertainty_ps))
    drift = format_with_uncertainty(
        float(fit.drift_ppm), float(fit.drift_uncertainty_ppm), unit="ppm"
    )
    return (
        f"clock fit: Bob - Alice offset {offset}, drift {drift}, "
        f"residual {float(fit.residual_rms_ps):.1f} ps rms"
    )


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %" if math.isfinite(x) else "unknown"
