"""The node daemon: config -> devices -> acquisition -> interlocks -> telemetry -> commands.

:class:`Daemon` composes the pieces on one asyncio loop:

* a :class:`~controller.supervisor.Supervisor` keeps each instrument connected
  in its own worker thread and polls the ``monitor`` readings;
* an :class:`~controller.acquisition.Acquisition` thread cuts the tag stream
  into windows (singles, coincidences, CAR, QBER, key rate);
* every window and every poll feeds the :class:`~controller.interlocks.InterlockEngine`;
  its actions go through the same validation as operator commands;
* records go to the telemetry ``Publisher`` (outbox first, then MQTT);
* requests on ``qnet/v1/<node>/cmd/<suffix>`` are validated and answered on
  ``qnet/v1/<node>/reply/<suffix>``;
* calibration (delays at start / on command, drift tracking) and polarization
  compensation (QBER as the cost) run as tasks.

``stop()`` (SIGTERM / SIGINT in ``qnet run``) brings every instrument to its
configured safe state, flushes the outbox and closes everything within
``shutdown_timeout_s``. From the moment shutdown begins nothing new is started
(no interlock action, request, capture or compensation step), so nothing can
undo the safe state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from coincidence import DriftTracker
from drivers import InstrumentError, TagSource

from ._daemon_config import (
    ConfigError,
    DaemonConfig,
    TaggersSource,
    TestbedSource,
    format_problems,
    instrument_surface,
)
from ._device_records import device_records
from .acquisition import Acquisition, Windower, WindowResult, finite_or_none, window_records
from .calibration import (
    CalibrationError,
    find_channel_delays,
    fit_clock,
    pin_clock,
    track_shift,
)
from .commands import (
    DAEMON,
    CommandError,
    DeviceSurface,
    ValidRequest,
    element_settings,
    error_reply,
    ok_reply,
    parse_request,
    validate_request,
)
from .compensation import CompensationResult, compensate
from .interlocks import ActionSpec, InterlockEngine, InterlockEvent
from .merge import MergedTagSource
from .qkd_link import LinkService
from .status_view import describe_request, describe_value
from .supervisor import DeviceUnavailable, DeviceWorker, Supervisor

log = logging.getLogger("qnet.daemon")

HISTORY = 600
#: Requests answered concurrently by the command listener.
MAX_INFLIGHT = 64
#: Share of ``shutdown_timeout_s`` the safe state may use (the rest: flush and close).
SAFE_STATE_SHARE = 0.6
#: Part of ``shutdown_timeout_s`` kept for closing the publisher and the devices, at most 1 s.
CLOSE_SHARE = 0.2
#: Why a request is refused once shutdown has begun (reply code ``device_unavailable``).
SHUTTING_DOWN = "the daemon is shutting down (safe state): nothing new is executed"


class Daemon:
    """One node's daemon (see the module docstring).

    Args:
        cfg: the validated daemon config.
        broker: overrides the config's broker (the demo's embedded broker); None keeps it.
        testbed: an in-process testbed to read tags from (source kind ``testbed``); if
            None and the config asks for one, the daemon loads and owns it.
    """

    def __init__(self, cfg: DaemonConfig, *, broker: Any = None, testbed: Any = None) -> None:
        self.cfg = cfg
        self.node = cfg.node
        d = cfg.daemon
        self.roles = d.acquisition.role_map() if d.acquisition is not None else None
        self.broker = broker if broker is not None else d.telemetry.broker
        self.testbed = testbed
        self._own_testbed = False
        problems = cfg.problems()  # load_daemon_config reports these with the file name
        if problems:
            raise ConfigError(format_problems(None, problems))
        self.instruments: dict[str, Any] = {}
        self.surfaces: dict[str, DeviceSurface] = {}
        for name, ic in cfg.instruments.items():
            self.instruments[name] = ic.build(name)
            self.surfaces[name] = instrument_surface(name, ic)
        workers: dict[str, DeviceWorker] = {}
        for name, ic in cfg.instruments.items():
            surf = self.surfaces[name]
            monitor: dict[str, Callable[[Any], Any]] = {
                key: surf.readables[key] if key in surf.readables else surf.settings[key].getter
                for key in d.monitor.get(name, [])
            }
            workers[name] = DeviceWorker(
                name,
                self.instruments[name],
                poll_interval_s=ic.poll_interval_s,
                call_timeout_s=max(2.0, 4 * ic.timeout_s),
                monitor=monitor,
            )
        self.workers = workers
        self.supervisor = Supervisor(workers, self._on_device_state, self._on_device_readings)
        self.engine = InterlockEngine(d.interlocks)
        acq = d.acquisition
        self.windower: Windower | None = None
        if acq is not None:
            self.windower = Windower(
                acq.n_channels,
                acq.window_s,
                acq.coincidence_window_ps,
                self.roles,
                acq.delays_ps,
                f_ec=acq.f_ec,
                key_basis=acq.key_basis,
            )
        self.acquisition: Acquisition | None = None
        self.publisher: Any = None
        self.key_paused = False
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.events: deque[dict[str, Any]] = deque(maxlen=200)
        self.calibration: dict[str, Any] = {"state": "not run"}
        self.compensation: dict[str, Any] = {"state": "idle"}
        self.acquisition_state = "stopped"
        self.requests_handled = 0
        self.requests_refused = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._answers: set[asyncio.Task[None]] = set()  # requests being answered
        self._stopping = False  # set first thing in shutdown(): nothing new starts
        self._comp_task: asyncio.Task[Any] | None = None
        self._comp_stop = threading.Event()
        self._cal_lock = asyncio.Lock()
        self._window_waiters: list[asyncio.Future[WindowResult]] = []
        self._started_wall = time.time()
        self._merger: MergedTagSource | None = None  # two taggers: Bob's clock map lives here
        self._clock: DriftTracker | None = None
        self._clock_pin_ps = 0.0  # offset left in the channel delays (see pin_clock)
        self.stopped = asyncio.Event()
        self.qkd_link: LinkService | None = None

    # -- lifecycle --
    async def start(self) -> None:
        """Start devices, acquisition, telemetry and the command listener (returns at once)."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.stopped = asyncio.Event()
        d = self.cfg.daemon
        src = d.acquisition.source if d.acquisition is not None else None
        if isinstance(src, TestbedSource) and self.testbed is None:
            from drivers.sim.testbed import load_testbed

            self.testbed = load_testbed(self.cfg.base_dir() / src.config)
            self._own_testbed = True
            if src.serve:
                self.testbed.serve()
        self.supervisor.start()
        if self.broker is not None:
            self._start_publisher()
            self._tasks.append(asyncio.create_task(self._command_loop(), name="qnet-commands"))
        if d.qkd_link is not None:  # the QKD link engine: its own module (controller.qkd_link)
            self.qkd_link = LinkService(
                d.qkd_link, node=self.node, link=d.link, base_dir=self.cfg.base_dir()
            )
            await self.qkd_link.start()
            submit = self.publisher.submit if self.publisher is not None else None
            self._tasks.append(asyncio.create_task(self.qkd_link.report_loop(submit)))
        if d.acquisition is None or self.windower is None:
            return
        self.acquisition = Acquisition(
            self._open_source,
            self.windower,
            self._on_window_thread,
            self._on_acq_state_thread,
            read_timeout_s=d.acquisition.read_timeout_s,
            on_batch=self.qkd_link.offer if self.qkd_link is not None else None,
        )
        self.acquisition.start()
        if d.calibration.at_start:
            self._tasks.append(asyncio.create_task(self._calibrate_at_start()))

    async def run(self) -> None:
        """Start, wait until ``stop()`` is asked, then shut down."""
        await self.start()
        await self._stop.wait()
        await self.shutdown()

    def stop(self) -> None:
        """Ask the daemon to shut down (safe from signal handlers on the loop)."""
        self._stop.set()

    async def shutdown(self) -> dict[str, Any]:
        """Safe state, flush, close, all within ``shutdown_timeout_s``. Returns what happened.

        First nothing new may start (``_stopping``: no interlock evaluation or action, no
        request, capture or compensation step), the supervisor stops polling and the
        acquisition stops handing on windows, and what runs is cancelled: nothing can undo
        the safe state. Then the safe state, in order, within ``SAFE_STATE_SHARE`` of the
        budget (each entry gets an equal share of what is left, so a hung device cannot
        starve the next one); the outbox is flushed until ``CLOSE_SHARE`` of the budget is
        left, which closes the publisher and the devices. A driver call already running in
        a device thread cannot be interrupted: the safe state queues behind it, and one
        stuck past the budget is abandoned (the process still waits for it at exit).
        """
        budget = self.cfg.daemon.shutdown_timeout_s
        t0 = time.monotonic()
        deadline = t0 + budget
        report: dict[str, Any] = {"safe_state": [], "flushed": None}
        self._stopping = True
        self._comp_stop.set()
        if self.acquisition is not None:
            self.acquisition.request_stop()
        for fut in self._window_waiters:
            fut.cancel()
        cancelled = [*self._tasks, *self._answers]
        if self._comp_task is not None:
            cancelled.append(self._comp_task)
        for t in cancelled:
            t.cancel()
        await self.supervisor.stop()  # its keepers are cancelled: no poll, no readings
        acq_stop = (
            asyncio.create_task(asyncio.to_thread(self.acquisition.stop, 0.5 * budget))
            if self.acquisition is not None
            else None
        )
        # safe state first: it matters most
        specs = self.cfg.daemon.safe_state
        safe_end = t0 + SAFE_STATE_SHARE * budget
        for k, spec in enumerate(specs):
            share = (safe_end - time.monotonic()) / (len(specs) - k)
            try:
                vreq = validate_request(
                    {"id": "shutdown", **spec.as_request()},
                    self.surfaces,
                    self.cfg.daemon.permissions,
                    role="system",
                )
                await asyncio.wait_for(self._device_op(vreq, force=True), max(0.05, share))
                report["safe_state"].append({**spec.as_request(), "ok": True})
            except Exception as exc:
                why = str(exc) or f"no answer in time ({type(exc).__name__})"
                log.error("safe state %s failed: %s", spec.as_request(), why)
                report["safe_state"].append({**spec.as_request(), "ok": False, "error": why})
        close_s = min(1.0, CLOSE_SHARE * budget)
        waits = [t for t in (*cancelled, acq_stop) if t is not None]
        if waits:
            done, _ = await asyncio.wait(
                waits, timeout=max(0.0, deadline - close_s - time.monotonic())
            )
            for t in done:  # retrieved, so that a late failure is not reported as unhandled
                if not t.cancelled() and t.exception() is not None:
                    log.debug("at shutdown: %s ended with %r", t.get_name(), t.exception())
        self._tasks.clear()
        closers = [asyncio.create_task(self.supervisor.close())]
        if self.qkd_link is not None:
            closers.append(asyncio.create_task(self.qkd_link.close()))
        if self.publisher is not None:
            with contextlib.suppress(Exception):
                report["flushed"] = await self.publisher.wait_drained(
                    max(0.0, deadline - close_s - time.monotonic())
                )
            closers.append(asyncio.create_task(self.publisher.close(drain_s=0.0)))
        _, pending = await asyncio.wait(closers, timeout=max(0.01, deadline - time.monotonic()))
        for t in pending:
            t.cancel()
        if self._own_testbed and self.testbed is not None:
            self.testbed.stop()
        report["elapsed_s"] = time.monotonic() - t0
        log.info("shut down in %.2f s", report["elapsed_s"])
        self.stopped.set()
        return report

    # -- tag source --
    def _open_source(self) -> TagSource:
        """Build the configured TagSource (runs in the acquisition thread)."""
        acq = self.cfg.daemon.acquisition
        assert acq is not None
        src = acq.source
        if isinstance(src, TestbedSource):
            if self.testbed.params.clocks.mode != "two_taggers":
                return self.testbed.tag_source("both", speed=src.speed)
            sides = [self.testbed.tag_source(s, speed=src.speed) for s in ("alice", "bob")]
            return self._keep_merger(MergedTagSource(sides, [0, 4], acq.n_channels), range(4, 8))
        assert isinstance(src, TaggersSource)
        assert self._loop is not None
        sources: list[TagSource] = []
        offsets: list[int] = []
        clocks = [spec.clock_offset_ps for spec in src.taggers]
        try:
            for spec in src.taggers:
                worker = self.workers[spec.device]
                inst = self.instruments[spec.device]
                deadline = time.monotonic() + 5 * worker.call_timeout_s
                while worker.state != "ready" and time.monotonic() < deadline:
                    time.sleep(0.05)  # the supervisor is (re)connecting it
                fut = asyncio.run_coroutine_threadsafe(
                    worker.call(lambda i: i.set_streaming(True)), self._loop
                )
                fut.result(timeout=worker.call_timeout_s + 1)
                sources.append(inst.tag_source())
                offsets.append(spec.channel_offset)
        except Exception:
            for s in sources:
                s.close()
            raise
        merged = MergedTagSource(sources, offsets, acq.n_channels, clocks)
        if len(sources) != 2:
            return merged
        return self._keep_merger(merged, range(offsets[1], offsets[1] + sources[1].n_channels))

    def _keep_merger(self, merged: MergedTagSource, second: range) -> MergedTagSource:
        """Remember a two-tagger merger (clock fitting) and re-apply the current clock map.

        Only when the second tagger (merged channels ``second``) holds all of
        Bob's channels, since the clock map is applied to that tagger.
        """
        assert self.roles is not None
        bob = list(self.roles.bob.values())
        if not all(c in second for c in bob):
            log.warning("clock drift not tracked: Bob's channels %s are not all on tagger 2", bob)
        elif self.cfg.daemon.calibration.clock_drift:
            self._merger = merged
            if self._clock is not None:
                merged.set_clock_map(1, pin_clock(self._clock.fit(), self._clock_pin_ps))
        return merged

    # -- callbacks from threads --
    def _on_window_thread(self, result: WindowResult) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_window, result)

    def _on_acq_state_thread(self, state: str) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_acq_state, state)

    def _on_acq_state(self, state: str) -> None:
        self.acquisition_state = state
        self._event("acquisition", state, None)

    def _on_window(self, result: WindowResult) -> None:
        if self._stopping:
            return  # a window still queued on the loop: no interlock may act any more
        self._tasks = [t for t in self._tasks if not t.done()]
        acq = self.cfg.daemon.acquisition
        assert acq is not None and self.roles is not None
        now = time.time()
        summary = result.summary()
        summary["time_s"] = now
        summary["key_paused"] = self.key_paused
        summary["qber"] = finite_or_none(result.link_qber(acq.min_sifted))
        self.history.append(summary)
        readings = result.readings(acq.min_sifted)
        self._evaluate(readings)
        if self.publisher is not None:
            try:
                recs = window_records(result, self.node, self.cfg.daemon.link, self.roles)
                if self.key_paused:
                    recs = [_zero_secure(r) for r in recs]
                recs += [self._health_record(n) for n in self.workers]
                # the publisher's own counters (outbox depth, drops, reconnects), once a window
                recs.append(self.publisher.counters_record(time.time_ns()))
                self.publisher.submit(recs)
            except Exception as exc:
                log.warning("window %d: telemetry failed: %s", result.index, exc)
        for fut in self._window_waiters:
            if not fut.done():
                fut.set_result(result)
        self._window_waiters.clear()
        cal = self.cfg.daemon.calibration
        if (
            cal.track
            and self.calibration.get("state") == "done"
            and result.index % cal.track_every == 0
            and not self._cal_lock.locked()
        ):
            self._tasks.append(asyncio.create_task(self._track_drift()))

    def _health_record(self, device: str) -> Any:
        import telemetry as tm

        w = self.workers[device]
        return tm.health(
            node=self.node,
            device=device,
            ok=w.state == "ready",
            state=w.state,
            errors=w.errors,
            latency_s=w.latency_s,
            message=(w.last_error or w.state)[:1000],
            time_ns=time.time_ns(),
        )

    def _on_device_state(self, device: str, state: str, error: str) -> None:
        self._event("device", f"{device}: {state}" + (f" ({error})" if error else ""), device)
        if self.publisher is not None:
            with contextlib.suppress(Exception):
                self.publisher.submit([self._health_record(device)])

    def _on_device_readings(self, device: str, values: dict[str, Any]) -> None:
        if self._stopping:
            return
        readings: dict[str, Any] = {}
        for k, v in values.items():
            if isinstance(v, bool | int | float):
                readings[f"{device}.{k}"] = v
        self._evaluate(readings)
        if self.publisher is not None:
            try:
                recs = device_records(
                    self.node, device, self.cfg.instruments[device].driver, values, time.time_ns()
                )
                if recs:
                    self.publisher.submit(recs)
            except Exception as exc:
                log.debug("%s: readings not published: %s", device, exc)

    # -- interlocks --
    def _evaluate(self, readings: dict[str, Any]) -> None:
        """Feed readings to the interlock engine and act on its events (never while stopping)."""
        if self._stopping:
            return
        for ev in self.engine.evaluate(readings, time.monotonic()):
            self._on_interlock(ev)

    def _on_interlock(self, ev: InterlockEvent) -> None:
        log.warning("interlock %s %s: %s", ev.interlock, ev.event, ev.reason)
        self._event("interlock", f"{ev.interlock} {ev.event}: {ev.reason}", ev.device)
        if self.publisher is not None:
            import telemetry as tm

            with contextlib.suppress(Exception):
                self.publisher.submit(
                    [
                        tm.interlock(
                            node=self.node,
                            interlock=ev.interlock,
                            active=ev.event != "clear",
                            event=ev.event,
                            reason=ev.reason[:1000],
                            device=ev.device,
                            time_ns=time.time_ns(),
                        )
                    ]
                )
        if self._stopping:
            return
        for action in ev.actions:
            self._tasks.append(asyncio.create_task(self._run_action(ev.interlock, action)))

    async def _run_action(self, source: str, action: ActionSpec) -> None:
        body = {"id": f"interlock:{source}", **action.as_request()}
        try:
            vreq = validate_request(body, self.surfaces, self.cfg.daemon.permissions, role="system")
            result = await self.execute(vreq)
            what = f"{source}: {describe_request(action.as_request())} -> {describe_value(result)}"
            self._event("action", what[:500], None)
        except Exception as exc:
            log.error("interlock %s action %s failed: %s", source, action.as_request(), exc)
            what = f"{source}: {describe_request(action.as_request())} failed: {exc}"
            self._event("action", what[:500], None)

    def _event(self, kind: str, text: str, device: str | None) -> None:
        self.events.append({"time_s": time.time(), "kind": kind, "text": text, "device": device})

    # -- requests --
    async def handle_payload(self, payload: bytes | str) -> bytes:
        """Validate, execute and answer one request (never raises)."""
        try:
            vreq = validate_request(payload, self.surfaces, self.cfg.daemon.permissions)
        except CommandError as exc:
            self.requests_refused += 1
            return error_reply(exc.request_id, exc.code, exc.message)
        except Exception as exc:  # defensive: a reply always goes out
            self.requests_refused += 1
            return error_reply(None, "bad_request", f"unreadable request: {exc}")
        try:
            result = await self.execute(vreq)
        except CommandError as exc:
            self.requests_refused += 1
            return error_reply(vreq.id, exc.code, exc.message)
        except DeviceUnavailable as exc:
            return error_reply(vreq.id, "device_unavailable", str(exc))
        except TimeoutError:
            return error_reply(vreq.id, "device_timeout", f"{vreq.device} did not answer in time")
        except InstrumentError as exc:
            return error_reply(vreq.id, "device_error", str(exc))
        except Exception as exc:
            log.exception("request %r failed", vreq)
            return error_reply(vreq.id, "internal_error", f"{type(exc).__name__}: {exc}")
        self.requests_handled += 1
        return ok_reply(vreq.id, result)

    async def execute(self, vreq: ValidRequest, quiet: bool = False) -> Any:
        """Run a validated request (device operation or daemon action); ``quiet``: no event.

        Every request, interlock action and compensation step passes here, so once shutdown
        has begun nothing reaches a device after (or in between) the safe state: refused
        with ``device_unavailable``.
        """
        if self._stopping:
            raise CommandError("device_unavailable", SHUTTING_DOWN)
        if vreq.device == DAEMON:
            return await self._daemon_action(vreq.name)
        return await self._device_op(vreq, quiet=quiet)

    async def _device_op(self, vreq: ValidRequest, force: bool = False, quiet: bool = False) -> Any:
        surf = self.surfaces[vreq.device]
        worker = self.workers[vreq.device]
        if vreq.op == "get":
            getter = (
                surf.settings[vreq.name].getter
                if vreq.name in surf.settings
                else surf.readables[vreq.name]
            )
            return {"value": await worker.call(getter)}
        if vreq.op == "set":
            spec = surf.settings[vreq.name]
            value = vreq.value
            if force and worker.state != "ready":
                # at shutdown try even a faulted device once, directly in its thread
                await worker.run_sync(lambda: spec.setter(worker.instrument, value))
            else:
                await worker.call(lambda inst: spec.setter(inst, value))
            if not quiet:
                text = f"{vreq.device}.{vreq.name} = {describe_value(value)} ({vreq.role})"
                self._event("set", text, vreq.device)
            return {"value": value}
        fn = surf.actions[vreq.name]
        timeout = self._reset_latch_timeout_s(vreq.device) if vreq.name == "reset_latch" else None
        result = await worker.call(fn, timeout)
        self._event("action", f"{vreq.device}.{vreq.name} ({vreq.role})", vreq.device)
        return {"value": result}

    def _reset_latch_timeout_s(self, device: str) -> float:
        """How long a ``reset_latch`` may take before the device is declared hung.

        The driver waits ``reset_wait_s`` and ramps in ``reset_steps`` steps of
        ``ramp_step_s``, each step a set command and its error query (plus the drop to 0
        and two reads): allow those waits, every exchange up to the instrument's
        ``timeout_s``, plus the usual call timeout. Shorter would fault the device mid-ramp.
        """
        opts = self.instruments[device].options
        steps = max(1, int(opts.get("reset_steps", 1)))
        waits_s = float(opts.get("reset_wait_s", 0.0)) + steps * float(opts.get("ramp_step_s", 0.0))
        exchanges_s = 2 * (steps + 2) * self.cfg.instruments[device].timeout_s
        return self.workers[device].call_timeout_s + waits_s + exchanges_s

    async def _daemon_action(self, name: str) -> Any:
        if name == "status":
            return self.status()
        if name == "devices":
            return {
                n: {**self.surfaces[n].describe(), **s} for n, s in self.supervisor.states().items()
            }
        if name == "interlocks":
            return {"interlocks": self.engine.status(), "active": self.engine.active()}
        if name == "pause_key":
            if not self.key_paused:
                self._event("key", "key generation paused", None)
            self.key_paused = True
            return {"key_paused": True}
        if name == "resume_key":
            if self.key_paused:
                self._event("key", "key generation resumed", None)
            self.key_paused = False
            return {"key_paused": False}
        if name == "calibrate":
            return await self.calibrate()
        if name == "compensate":
            return self.start_compensation()
        raise CommandError("unknown_action", f"daemon action {name!r} is not implemented")

    def status(self) -> dict[str, Any]:
        """A snapshot for ``qnet status`` and the ``daemon.status`` request."""
        return {
            "node": self.node,
            "link": self.cfg.daemon.link,
            "uptime_s": time.time() - self._started_wall,
            "acquisition": self.acquisition_state,
            "windows": self.acquisition.windows if self.acquisition else 0,
            "source_errors": self.acquisition.source_errors if self.acquisition else 0,
            "key_paused": self.key_paused,
            "delays_ps": [int(x) for x in self.windower.delays_ps] if self.windower else None,
            "calibration": self.calibration,
            "compensation": self.compensation,
            "devices": {n: s["state"] for n, s in self.supervisor.states().items()},
            "interlocks_active": self.engine.active(),
            "last_window": self.history[-1] if self.history else None,
            "history": list(self.history)[-60:],
            "events": list(self.events)[-20:],
            "requests": {"handled": self.requests_handled, "refused": self.requests_refused},
            "capture": self.acquisition.capture_progress() if self.acquisition else None,
            "qkd_link": self.qkd_link.status() if self.qkd_link is not None else None,
        }

    # -- MQTT --
    def _start_publisher(self) -> None:
        from telemetry import OutboxSettings, Publisher, PublisherSettings

        tcfg = self.cfg.daemon.telemetry
        outbox = tcfg.outbox or OutboxSettings(path=Path("runs") / f"outbox-{self.node}.sqlite")
        outbox.path.parent.mkdir(parents=True, exist_ok=True)
        settings = PublisherSettings(
            node=self.node,
            broker=self.broker,
            outbox=outbox,
            max_lines_per_message=tcfg.max_lines_per_message,
        )
        self.publisher = Publisher(settings)
        self.publisher.start()

    async def _command_loop(self) -> None:
        """Listen for requests until cancelled; any failure is logged and retried with backoff.

        A broker outage, a missing password or TLS file, or a bug in one round must not end
        the listener: the daemon would keep running but could no longer be commanded.
        """
        import aiomqtt

        from telemetry import backoff_s, command_topic

        from ._broker import BrokerSetupError, connect_secrets

        b = self.broker
        where = "daemon.telemetry.broker"
        prefix = command_topic(self.node, "")
        attempt = 0
        while True:
            try:
                password, tls_context = connect_secrets(b, where)
                async with aiomqtt.Client(
                    b.host,
                    b.port,
                    identifier=f"{b.client_id}-cmd",
                    username=b.username,
                    password=password,
                    tls_context=tls_context,
                    keepalive=b.keepalive_s,
                    clean_session=True,
                    protocol=aiomqtt.ProtocolVersion.V311,
                ) as client:
                    attempt = 0
                    await self._listen(client, prefix)
                delay = backoff_s(attempt, b.reconnect_min_s, b.reconnect_max_s)
            except aiomqtt.MqttError as exc:
                delay = backoff_s(attempt, b.reconnect_min_s, b.reconnect_max_s)
                log.warning("command listener: %s; retry in %.1f s", exc, delay)
            except BrokerSetupError as exc:
                delay = b.reconnect_max_s  # waits for someone to fix it: no need to hurry
                log.error(
                    "command listener cannot connect: %s; fix %s in the config "
                    "(requests are not answered until then); retry in %.1f s",
                    exc,
                    where,
                    delay,
                )
                self._event("mqtt", f"command listener: {exc}", None)
            except Exception as exc:
                delay = backoff_s(attempt, b.reconnect_min_s, b.reconnect_max_s)
                log.exception("command listener failed: %s; restarting it in %.1f s", exc, delay)
                self._event("mqtt", f"command listener failed: {type(exc).__name__}: {exc}", None)
            attempt += 1
            await asyncio.sleep(delay)

    async def _listen(self, client: Any, prefix: str) -> None:
        """Subscribe to this node's commands and answer each (returns if the client stops)."""
        from telemetry import reply_topic

        await client.subscribe(prefix + "#", qos=1)
        self._event("mqtt", "command listener subscribed", None)
        # requests run concurrently (a calibration does not hold up a status),
        # at most MAX_INFLIGHT at a time
        sem = asyncio.Semaphore(MAX_INFLIGHT)
        async for msg in client.messages:
            suffix = str(msg.topic)[len(prefix) :] or "default"
            payload = msg.payload if isinstance(msg.payload, bytes) else b""
            await sem.acquire()
            topic = reply_topic(self.node, suffix)
            task = asyncio.create_task(
                self._answer(client, topic, payload, sem, retained=bool(msg.retain))
            )
            self._answers.add(task)  # shutdown cancels what is still being answered
            task.add_done_callback(self._answers.discard)

    async def _answer(
        self,
        client: Any,
        topic: str,
        payload: bytes,
        sem: asyncio.Semaphore,
        retained: bool = False,
    ) -> None:
        """Answer one request on ``topic``; releases ``sem`` when done.

        A retained request is refused, not executed: it would run again on every reconnect.
        """
        import aiomqtt

        try:
            if retained:
                reply = self._refuse_retained(payload, topic)
            else:
                reply = await self.handle_payload(payload)
            await client.publish(topic, reply, qos=1)
        except aiomqtt.MqttError as exc:
            log.warning("reply on %s lost: %s", topic, exc)
        finally:
            sem.release()

    def _refuse_retained(self, payload: bytes, topic: str) -> bytes:
        """The ``bad_request`` reply to a retained request (counted as refused)."""
        self.requests_refused += 1
        try:
            rid = parse_request(payload).id
        except CommandError as exc:
            rid = exc.request_id
        log.warning("retained request %r on %s refused", rid, topic)
        return error_reply(
            rid,
            "bad_request",
            "retained commands are not executed (a retained request would run again on "
            "every reconnect): publish it with retain=false",
        )

    # -- calibration --
    async def _calibrate_at_start(self) -> None:
        try:
            await self.calibrate()
        except CommandError as exc:
            log.error("calibration at start failed: %s", exc.message)

    async def _capture(self, seconds: float) -> Any:
        if self._stopping:
            raise CommandError("device_unavailable", SHUTTING_DOWN)
        if self.acquisition is None:
            raise CommandError("not_configured", "this node has no acquisition section")
        cap = self.acquisition.capture(seconds)
        wall_budget = seconds * 3 + 10.0
        ok = await asyncio.to_thread(cap.done.wait, wall_budget)
        if not ok or cap.error:
            raise CommandError(
                "calibration_failed",
                cap.error
                or f"no {seconds} s of tags arrived within {wall_budget:.0f} s "
                f"(acquisition: {self.acquisition_state})",
            )
        return cap.batch()

    async def calibrate(self) -> dict[str, Any]:
        """Capture raw tags, find the channel delays and apply them from the next window."""
        cal = self.cfg.daemon.calibration
        acq = self.cfg.daemon.acquisition
        if acq is None or self.windower is None or self.roles is None:
            raise CommandError("not_configured", "this node has no acquisition section")
        async with self._cal_lock:
            self.calibration = {"state": "running", "started_s": time.time()}
            self._event("calibration", "started", None)
            try:
                batch = await self._capture(cal.capture_s)
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
                self.calibration = {"state": "failed", "error": str(exc)}
                self._event("calibration", f"failed: {exc}", None)
                raise CommandError("calibration_failed", str(exc)) from None
            except CommandError as exc:
                self.calibration = {"state": "failed", "error": exc.message}
                self._event("calibration", f"failed: {exc.message}", None)
                raise
            except Exception as exc:
                log.exception("calibration failed")
                self.calibration = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
                self._event("calibration", f"failed: {exc}", None)
                raise CommandError("calibration_failed", str(exc)) from None
            self.windower.set_delays(result.delays_ps)
            self.calibration = {"state": "done", "finished_s": time.time(), **result.summary()}
            if merger is not None and clock is not None:
                self._clock = DriftTracker.from_fit(
                    clock, max_delay_ps=cal.max_delay_ps, max_windows=64
                )
                self._clock_pin_ps = pin
                merger.set_clock_map(1, pin_clock(clock, pin))
                self.calibration["clock"] = _clock_summary(clock)
                self._event("calibration", f"clock: {_clock_summary(clock)}", None)
            self._event("calibration", f"delays {result.describe()}", None)
            return self.calibration

    async def _track_drift(self) -> None:
        cal = self.cfg.daemon.calibration
        acq = self.cfg.daemon.acquisition
        if self._cal_lock.locked() or acq is None or self.windower is None or self.roles is None:
            return
        async with self._cal_lock:
            try:
                batch = await self._capture(min(0.5, acq.window_s))
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
                self.calibration["clock"] = {**_clock_summary(fit), "updates": clock.added_offsets}
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
        assert comp is not None and acq is not None and self._loop is not None
        device = comp.device
        worker = self.workers[device]
        surf = self.surfaces[device]
        names = element_settings(surf)
        self._event("compensation", f"started on {device}", device)
        try:
            start = [float(await worker.call(surf.settings[n].getter)) for n in names]
        except Exception as exc:
            self.compensation = {"state": "failed", "error": f"cannot read setpoints: {exc}"}
            self._event("compensation", f"failed: {exc}", device)
            return
        limits = [surf.settings[n].limits or (0.0, 0.0) for n in names]
        loop = self._loop
        current = list(start)
        window_s = comp.window_s or acq.window_s

        def measure(x: list[float]) -> float:
            for k, v in enumerate(x):
                if v != current[k]:
                    body = {"id": "compensation", "device": device, "setting": names[k], "value": v}
                    vreq = validate_request(
                        body, self.surfaces, self.cfg.daemon.permissions, role="system"
                    )
                    asyncio.run_coroutine_threadsafe(self.execute(vreq, quiet=True), loop).result(
                        10.0
                    )
                    current[k] = v
            fut = asyncio.run_coroutine_threadsafe(self._capture(window_s), loop)
            batch = fut.result(window_s * 3 + 15)
            return self._qber_of(batch)

        try:
            result: CompensationResult = await asyncio.to_thread(
                compensate, measure, start, limits, comp, self._comp_stop.is_set
            )
        except Exception as exc:
            self.compensation = {"state": "failed", "error": str(exc)}
            self._event("compensation", f"failed: {exc}", device)
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

    def _qber_of(self, batch: Any) -> float:
        """Mean of the two bases' QBER of a raw capture (nan with too few sifted counts)."""
        from coincidence import CoincidenceCounter, qber_from_matrix

        acq = self.cfg.daemon.acquisition
        assert acq is not None and self.windower is not None and self.roles is not None
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

    async def wait_window(self, timeout_s: float) -> WindowResult:
        """The next completed window (for tests and the demo)."""
        assert self._loop is not None
        fut: asyncio.Future[WindowResult] = self._loop.create_future()
        self._window_waiters.append(fut)
        return await asyncio.wait_for(fut, timeout_s)


def _zero_secure(rec: Any) -> Any:
    """A key_rate record with ``secure_bps`` 0 (key generation paused); others unchanged."""
    if rec.measurement != "key_rate":
        return rec
    from telemetry import Record

    fields = dict(rec.fields)
    fields["secure_bps"] = 0.0
    return Record(rec.measurement, rec.tags, fields, rec.time_ns)


def _clock_summary(fit: Any) -> dict[str, float]:
    """JSON-friendly digest of a ``ClockDrift`` (Bob's tagger vs Alice's)."""
    return {
        "offset0_ps": round(float(fit.offset0_ps), 1),
        "offset0_uncertainty_ps": finite_or_none(round(float(fit.offset0_uncertainty_ps), 1)),
        "drift_ppm": round(float(fit.drift_ppm), 6),
        "drift_uncertainty_ppm": finite_or_none(round(float(fit.drift_uncertainty_ppm), 6)),
        "residual_rms_ps": round(float(fit.residual_rms_ps), 1),
    }
