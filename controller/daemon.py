"""The node daemon: config -> devices -> acquisition -> interlocks -> telemetry -> commands.

:class:`Daemon` composes the pieces on one asyncio loop:

* a :class:`~controller.supervisor.Supervisor` keeps each instrument connected
  in its own worker thread and polls the ``monitor`` readings;
* an :class:`~controller.acquisition.Acquisition` thread cuts the tag stream
  into windows (singles, coincidences, CAR, QBER, key rate);
* every window and every poll feeds the :class:`~controller.interlocks.InterlockEngine`;
  its actions go through the same validation as operator commands;
* records go to the telemetry ``Publisher`` (outbox first, then MQTT);
* the :class:`~controller.command_server.CommandServer` answers requests on
  ``qnet/v1/<node>/cmd/<user>/<suffix>`` (validated, authenticated, rate-limited)
  through :meth:`Daemon.execute`;
* the link's upkeep (:class:`~controller.link_upkeep.LinkUpkeep`: delays at start and
  on command, drift tracking, polarization compensation) gets callables, not the daemon;
* at start, one line says what runs; with ``arm`` (``qnet run --arm`` or
  ``operating_state.arm_at_start``) the instruments are ramped to the operating state
  (:mod:`controller.operating`) before the calibration; the broker's loss and return
  are logged once each (:mod:`controller._broker_watch`).

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
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivers import TagSource
from telemetry import OutboxUnavailable

from ._broker_watch import BrokerQuiet, watch_broker
from ._daemon_config import (
    ConfigError,
    DaemonConfig,
    TaggersSource,
    TestbedSource,
    format_problems,
    instrument_surface,
)
from ._device_loss import DeviceMemory, differences
from ._device_records import device_records
from .acquisition import (
    Acquisition,
    Gap,
    Windower,
    WindowResult,
    finite_or_none,
    window_records,
)
from .command_server import CommandServer
from .commands import (
    DAEMON,
    CommandError,
    DeviceSurface,
    ValidRequest,
    validate_request,
)
from .interlocks import ActionSpec, InterlockEngine, InterlockEvent
from .link_upkeep import SHUTTING_DOWN, LinkUpkeep
from .merge import MergedTagSource
from .operating import light_hint, start_up_line
from .qkd_link import LinkService
from .status_view import describe_request, describe_value
from .supervisor import (
    PRIORITY_COMMAND,
    PRIORITY_SYSTEM,
    DeviceWorker,
    Supervisor,
)

log = logging.getLogger("qnet.daemon")

HISTORY = 600
#: Share of ``shutdown_timeout_s`` the safe state may use (the rest: flush and close).
SAFE_STATE_SHARE = 0.6
#: Part of ``shutdown_timeout_s`` kept for closing the publisher and the devices, at most 1 s.
CLOSE_SHARE = 0.2
#: How long the start-up line waits for the devices to answer, s.
START_UP_WAIT_S = 5.0


class Daemon:
    """One node's daemon (see the module docstring).

    Args:
        cfg: the validated daemon config.
        broker: overrides the config's broker (the demo's embedded broker); None keeps it.
        testbed: an in-process testbed to read tags from (source kind ``testbed``); if
            None and the config asks for one, the daemon loads and owns it.
    """

    def __init__(
        self, cfg: DaemonConfig, *, broker: Any = None, testbed: Any = None, arm: bool = False
    ) -> None:
        self.cfg = cfg
        #: apply ``daemon.operating_state`` at start (``qnet run --arm`` or ``arm_at_start``)
        self.arm = arm or cfg.daemon.operating_state.arm_at_start
        self.arming: dict[str, Any] = {"state": "requested" if self.arm else "not requested"}
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
                max_queue=d.commands.device_queue,
            )
        self.workers = workers
        self.supervisor = Supervisor(workers, self._on_device_state, self._on_device_readings)
        self.memory = DeviceMemory()  # last known settings, lost devices (see _device_loss)
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
        self.upkeep: LinkUpkeep | None = None
        if self.windower is not None and self.roles is not None:
            self.upkeep = LinkUpkeep(
                cfg,
                self.windower,
                self.roles,
                self.surfaces,
                acquisition=lambda: self.acquisition,
                execute=lambda vreq: self.execute(vreq, quiet=True),
                device_call=self._device_call,
                event=self._event,
                stopping=lambda: self._stopping,
                light_hint=lambda: light_hint(cfg, self.surfaces, self._device_call),
            )
        self.acquisition_state = "stopped"
        self.commands = CommandServer(
            self.node,
            self.broker,
            d.commands,
            d.permissions,
            self.surfaces,
            self.execute,
            self._event,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False  # set first thing in shutdown(): nothing new starts
        self._window_waiters: list[asyncio.Future[WindowResult]] = []
        self._started_wall = time.time()
        self._broker_quiet = BrokerQuiet()
        self.stopped = asyncio.Event()
        self.qkd_link: LinkService | None = None

    # -- lifecycle --
    async def start(self) -> None:
        """Start devices, acquisition, telemetry and the command listener (returns at once)."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.stopped = asyncio.Event()
        d = self.cfg.daemon
        if self.broker is not None:
            self._start_publisher()  # first: an unusable outbox stops the start, nothing runs
        src = d.acquisition.source if d.acquisition is not None else None
        if isinstance(src, TestbedSource) and self.testbed is None:
            from drivers.sim.testbed import load_testbed

            self.testbed = load_testbed(self.cfg.base_dir() / src.config)
            self._own_testbed = True
            if src.serve:
                self.testbed.serve()
        self.supervisor.start()
        if self.broker is not None:
            self._tasks.append(asyncio.create_task(self.commands.run(), name="qnet-commands"))
            watch = watch_broker(
                self.broker,
                lambda: self.publisher.connected,
                lambda: len(self.publisher.outbox),
                self._event,
                self._broker_quiet,
            )
            self._tasks.append(asyncio.create_task(watch, name="qnet-broker"))
        if d.qkd_link is not None:  # the QKD link engine: its own module (controller.qkd_link)
            self.qkd_link = LinkService(
                d.qkd_link, node=self.node, link=d.link, base_dir=self.cfg.base_dir()
            )
            await self.qkd_link.start()
            submit = self.publisher.submit if self.publisher is not None else None
            self._tasks.append(asyncio.create_task(self.qkd_link.report_loop(submit)))
        self._tasks.append(asyncio.create_task(self._start_up(), name="qnet-start-up"))
        if d.acquisition is None or self.windower is None:
            return
        self.acquisition = Acquisition(
            self._open_source,
            self.windower,
            self._on_window_thread,
            self._on_acq_state_thread,
            read_timeout_s=d.acquisition.read_timeout_s,
            on_gap=self._on_gap_thread,
            on_batch=self.qkd_link.offer if self.qkd_link is not None else None,
        )
        self.acquisition.start()

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
        upkeep_tasks = self.upkeep.stop() if self.upkeep is not None else []
        if self.acquisition is not None:
            self.acquisition.request_stop()
        for fut in self._window_waiters:
            fut.cancel()
        cancelled = [*self._tasks, *self.commands.answers, *upkeep_tasks]
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
        self._broker_quiet.detach()
        safe = report["safe_state"]
        failed = [e for e in safe if not e["ok"]]
        log.info(
            "shut down in %.2f s: safe state %s%s; telemetry %s%s",
            report["elapsed_s"],
            ", ".join(_setting_text(e) for e in safe) or "none configured",
            f" ({len(failed)} FAILED)" if failed else "",
            {True: "flushed", False: "left in the outbox", None: "off"}[report["flushed"]],
            ". The safe state stays in the instruments: start with --arm to run again"
            if safe
            else "",
        )
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
        elif self.cfg.daemon.calibration.clock_drift and self.upkeep is not None:
            self.upkeep.attach_merger(merged)
        return merged

    # -- callbacks from threads --
    def _on_window_thread(self, result: WindowResult) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_window, result)

    def _on_acq_state_thread(self, state: str) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_acq_state, state)

    def _on_gap_thread(self, gap: Gap) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_gap, gap)

    def _on_gap(self, gap: Gap) -> None:
        """One event and one ``health`` record (device ``acquisition``) per gap in the tags."""
        self._event("gap", gap.describe(), None)
        if self.publisher is not None:
            import telemetry as tm

            with contextlib.suppress(Exception):
                self.publisher.submit(
                    [
                        tm.health(
                            node=self.node,
                            device="acquisition",
                            ok=False,
                            state="gap",
                            message=gap.describe()[:1000],
                            time_ns=time.time_ns(),
                        )
                    ]
                )

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
            except OutboxUnavailable as exc:  # the publisher said why, once; health shows it
                log.debug("window %d: telemetry refused: %s", result.index, exc)
            except Exception as exc:
                log.warning("window %d: telemetry failed: %s", result.index, exc)
        for fut in self._window_waiters:
            if not fut.done():
                fut.set_result(result)
        self._window_waiters.clear()
        if self.upkeep is not None:
            self.upkeep.on_window(result.index)

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
        if self._stopping:
            return
        if state == "faulted" and device not in self.memory.lost:
            self._on_device_lost(device)
        elif state == "ready":
            self._tasks.append(asyncio.create_task(self._on_device_ready(device)))

    def _on_device_lost(self, device: str) -> None:
        """A device faulted: ``<device>.lost`` to the interlocks, its ``on_loss`` actions run."""
        self.memory.lost.add(device)
        self._evaluate({f"{device}.lost": True})
        loss = self.cfg.daemon.on_loss.get(device)
        for action in loss.actions if loss is not None else ():
            self._tasks.append(asyncio.create_task(self._run_action(f"{device} lost", action)))

    async def _on_device_ready(self, device: str) -> None:
        """Ready (first time or again): read its settings back and compare with what is known."""
        was_lost = device in self.memory.lost
        self.memory.lost.discard(device)
        if was_lost:
            self._evaluate({f"{device}.lost": False})
        worker, surf = self.workers[device], self.surfaces[device]
        actual: dict[str, Any] = {}
        for name, spec in surf.settings.items():
            try:
                actual[name] = await worker.call(spec.getter)
            except Exception as exc:  # a setting it cannot read back is not compared
                log.debug("%s.%s not read back: %s", device, name, exc)
        expected = dict(self.memory.known.get(device, {}))
        self.memory.baseline(device, actual)  # a device first seen now: its state as found
        if not was_lost or not expected:
            return
        diffs = differences(device, expected, actual)
        if not diffs:
            self._event("device", f"{device} back with its settings as commanded", device)
            return
        loss = self.cfg.daemon.on_loss.get(device)
        policy = loss.on_reconnect if loss is not None else "report"
        text = "; ".join(d.describe() for d in diffs)
        log.warning("%s came back in another state: %s (on_reconnect: %s)", device, text, policy)
        self._event("mismatch", f"{text} (on_reconnect: {policy})"[:500], device)
        if self.publisher is not None:
            import telemetry as tm

            with contextlib.suppress(Exception):
                rec = tm.health(
                    node=self.node,
                    device=device,
                    ok=False,
                    state="mismatch",
                    message=f"came back in another state: {text}"[:1000],
                    time_ns=time.time_ns(),
                )
                self.publisher.submit([rec])
        if policy == "refuse":
            self.memory.refused[device] = {d.setting: d for d in diffs}
        elif policy == "restore":
            for d in diffs:
                spec = ActionSpec(device=device, setting=d.setting, value=d.expected)
                await self._run_action(f"{device} restore", spec)

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
        if ev.event != "repeat":
            acts = "; ".join(describe_request(a.as_request()) for a in ev.actions) or "none"
            (log.warning if ev.event == "trip" else log.info)(
                "interlock %s %s: %s; actions: %s",
                ev.interlock,
                "TRIPPED" if ev.event == "trip" else "cleared",
                ev.reason,
                acts,
            )
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
    @property
    def requests_handled(self) -> int:
        """Requests answered ok (by the command server)."""
        return self.commands.handled

    @property
    def requests_refused(self) -> int:
        """Requests refused before reaching a device (by the command server)."""
        return self.commands.refused

    async def handle_payload(self, payload: bytes | str) -> bytes:
        """Validate, execute and answer one request (never raises): the command server's."""
        return await self.commands.handle_payload(payload)

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
        if vreq.op != "get" and vreq.role != "system":  # safety actions are never refused
            why = self.memory.refusal(vreq.device, vreq.name if vreq.op == "set" else None)
            if why is not None:
                raise CommandError("device_unavailable", why)
        return await self._device_op(vreq, quiet=quiet)

    async def _device_op(self, vreq: ValidRequest, force: bool = False, quiet: bool = False) -> Any:
        surf = self.surfaces[vreq.device]
        worker = self.workers[vreq.device]
        # the daemon's own actions (interlocks, safe state) go before operators' commands
        prio = PRIORITY_SYSTEM if vreq.role == "system" else PRIORITY_COMMAND
        if vreq.op == "get":
            getter = (
                surf.settings[vreq.name].getter
                if vreq.name in surf.settings
                else surf.readables[vreq.name]
            )
            return {"value": await worker.call(getter, priority=prio)}
        if vreq.op == "set":
            spec = surf.settings[vreq.name]
            value = vreq.value
            if force and worker.state != "ready":
                # at shutdown try even a faulted device once, directly in its thread
                await worker.run_sync(lambda: spec.setter(worker.instrument, value), None, prio)
            else:
                await worker.call(lambda inst: spec.setter(inst, value), priority=prio)
            self.memory.remember(vreq.device, vreq.name, value)
            if not quiet:
                text = f"{vreq.device}.{vreq.name} = {describe_value(value)} ({vreq.role})"
                self._event("set", text, vreq.device)
            return {"value": value}
        fn = surf.actions[vreq.name]
        timeout = self._reset_latch_timeout_s(vreq.device) if vreq.name == "reset_latch" else None
        result = await worker.call(fn, timeout, priority=prio)
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
            "telemetry": self.publisher.health() if self.publisher is not None else None,
            "healthy": self.publisher is None or not self.publisher.stalled,
            "last_window": self.history[-1] if self.history else None,
            "history": list(self.history)[-60:],
            "events": list(self.events)[-20:],
            "requests": self.commands.counters(),
            "capture": self.acquisition.capture_progress() if self.acquisition else None,
            "qkd_link": self.qkd_link.status() if self.qkd_link is not None else None,
        }

    # -- MQTT --
    def _start_publisher(self) -> None:
        from telemetry import Publisher, PublisherSettings

        tcfg = self.cfg.daemon.telemetry
        outbox = outbox_settings(self.cfg)
        settings = PublisherSettings(
            node=self.node,
            broker=self.broker,
            outbox=outbox,
            max_lines_per_message=tcfg.max_lines_per_message,
        )
        self.publisher = Publisher(settings)  # OutboxError (names the path) if unusable
        self.publisher.on_health = self._on_telemetry_health
        self.publisher.start()

    def _on_telemetry_health(self, health: dict[str, Any]) -> None:
        """The publisher stalled (storage error) or resumed: an event (its alarm is published)."""
        if health["ok"]:
            self._event("telemetry", "telemetry resumed: the outbox stores again", None)
        else:
            self._event("telemetry", f"telemetry stalled: {health['error']}"[:500], None)

    # -- start-up: summary, arming, calibration --
    async def _device_call(self, device: str, fn: Callable[[Any], Any]) -> Any:
        """``fn(instrument)`` in ``device``'s worker thread (a set-point read)."""
        return await self.workers[device].call(fn)

    async def _start_up(self) -> None:
        """Once the devices have answered: the start-up line, then arming, then calibration.

        Arming waits for the devices and one round of monitor readings, so that an
        interlock already tripped (a TEC out of range) refuses it. Calibration waits
        for arming (no light before).
        """
        d = self.cfg.daemon
        await self.supervisor.wait_ready(START_UP_WAIT_S)
        for _ in range(20):  # the broker's first answer, up to 2 s, for the start-up line
            if self.publisher is None or self.publisher.connected:
                break
            await asyncio.sleep(0.1)
        if self.arm and d.operating_state.setpoints:
            polls = [ic.poll_interval_s for n, ic in self.cfg.instruments.items() if n in d.monitor]
            await asyncio.sleep(min(2.0, max(polls, default=0.0)) + 0.1)
        log.info(
            "%s",
            start_up_line(
                self.cfg,
                self.supervisor.states(),
                self.broker,
                self.publisher is not None and self.publisher.connected,
                self.arm,
            ),
        )
        if self.arm and not await self._arm():
            return
        if self.upkeep is not None and d.calibration.at_start and not self._stopping:
            self.upkeep.calibrate_soon()

    async def _arm(self) -> bool:
        """Apply the operating state (``controller.arming``); False (logged) when refused."""
        from .operating import ArmingError, arm

        ops = self.cfg.daemon.operating_state
        if not ops.setpoints:
            log.warning("--arm: daemon.operating_state has no set-points; nothing to apply")
            self.arming = {"state": "nothing to apply"}
            return True
        self.arming = {"state": "running"}
        self._event("arming", "ramping to the operating state", None)
        try:
            done = await arm(
                ops,
                self.surfaces,
                self.cfg.daemon.permissions,
                execute=lambda vreq: self.execute(vreq, quiet=True),
                device_call=self._device_call,
                tripped=self.engine.active,
            )
        except ArmingError as exc:
            self.arming = {"state": "refused", "error": str(exc)}
            self._event("arming", str(exc), None)
            log.error("%s", exc)
            return False
        self.arming = {"state": "armed", "applied": done}
        self._event("arming", "armed: " + "; ".join(done), None)
        log.info("armed: %s", "; ".join(done))
        await asyncio.sleep(ops.settle_s)
        return True

    # -- link upkeep (controller.link_upkeep) --
    @property
    def calibration(self) -> dict[str, Any]:
        """The calibration's state for ``status`` (``{"state": "not run"}`` without acquisition)."""
        return self.upkeep.calibration if self.upkeep is not None else {"state": "not run"}

    @property
    def compensation(self) -> dict[str, Any]:
        """The compensation's state for ``status``."""
        return self.upkeep.compensation if self.upkeep is not None else {"state": "idle"}

    async def _capture(self, seconds: float) -> Any:
        """``seconds`` of raw tags (see ``LinkUpkeep.capture``)."""
        if self.upkeep is None:
            raise CommandError("not_configured", "this node has no acquisition section")
        return await self.upkeep.capture(seconds)

    async def calibrate(self) -> dict[str, Any]:
        """Find the channel delays (and clocks) now (see ``LinkUpkeep.calibrate``)."""
        if self.upkeep is None:
            raise CommandError("not_configured", "this node has no acquisition section")
        return await self.upkeep.calibrate()

    def start_compensation(self) -> dict[str, Any]:
        """Start polarization compensation (see ``LinkUpkeep.start_compensation``)."""
        if self.upkeep is None:
            raise CommandError("not_configured", "no compensation section in the daemon config")
        return self.upkeep.start_compensation()

    async def wait_window(self, timeout_s: float) -> WindowResult:
        """The next completed window (for tests and the demo)."""
        assert self._loop is not None
        fut: asyncio.Future[WindowResult] = self._loop.create_future()
        self._window_waiters.append(fut)
        return await asyncio.wait_for(fut, timeout_s)


def outbox_settings(cfg: DaemonConfig) -> Any:
    """The daemon's outbox: the configured one, else ``runs/outbox-<node>.sqlite``."""
    from telemetry import OutboxSettings

    outbox = cfg.daemon.telemetry.outbox
    return outbox or OutboxSettings(path=Path("runs") / f"outbox-{cfg.node}.sqlite")


def _zero_secure(rec: Any) -> Any:
    """A key_rate record with ``secure_bps`` 0 (key generation paused); others unchanged."""
    if rec.measurement != "key_rate":
        return rec
    from telemetry import Record

    fields = dict(rec.fields)
    fields["secure_bps"] = 0.0
    return Record(rec.measurement, rec.tags, fields, rec.time_ns)


def _setting_text(entry: dict[str, Any]) -> str:
    """One safe-state entry of the shutdown report as ``device.setting = value``."""
    name = entry.get("setting") or entry.get("action")
    value = f" = {describe_value(entry['value'])}" if "setting" in entry else ""
    return f"{entry['device']}.{name}{value}" + ("" if entry.get("ok") else " (failed)")
