"""The asyncio supervisor: one worker thread per instrument, with a state machine and backoff.

Drivers are synchronous, so each instrument gets its own single-thread
executor: every call for that instrument runs there, in order, and a slow or
hung instrument only ever blocks its own thread. Each device moves through

    disconnected -> connecting -> ready
                        ^           | a connection-level error (timeout, lost)
                        |           v
                        +------- faulted  (retried after a backoff that doubles, capped)

A faulted device never stops the others; the supervisor keeps polling the
ready ones (``monitor`` readables at each instrument's ``poll_interval_s``)
and reports readings and state changes through callbacks on the event loop.

Calls wait for their turn in a priority queue, one running at a time: polls and
reconnects (an interlock's inputs) first, then the daemon's own actions
(interlock actions, safe state), then operator commands, which are refused with
:class:`DeviceBusy` beyond ``max_queue`` waiting. A call's timeout starts when
it reaches the instrument, so time spent queued never faults a device.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from drivers import ConnectionLost, InstrumentError, InstrumentTimeout

log = logging.getLogger("qnet.supervisor")

STATES = ("disconnected", "connecting", "ready", "faulted")


#: Call priorities (lower runs first): polls/reconnects, the daemon's own actions, commands.
PRIORITY_POLL = 0
PRIORITY_SYSTEM = 1
PRIORITY_COMMAND = 2


class DeviceUnavailable(Exception):
    """The device is not ready (faulted or still connecting); the message says why."""


class DeviceBusy(Exception):
    """Too many commands already wait for this device; the message says how many."""


@dataclass
class DeviceWorker:
    """One instrument, its worker thread and its state."""

    name: str
    instrument: Any
    poll_interval_s: float = 1.0
    call_timeout_s: float = 5.0
    monitor: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    max_queue: int = 16
    state: str = "disconnected"
    last_error: str = ""
    errors: int = 0
    reconnects: int = 0
    latency_s: float = 0.0
    readings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"dev-{self.name}")
        self._backoff_s = self.backoff_initial_s
        self._wake = asyncio.Event()
        self._busy = False  # a call holds the device thread (until it really returns)
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.queued_commands = 0
        self.refused_busy = 0
        self.polls = 0

    async def _turn(self, priority: int) -> None:
        """Wait (without a deadline) until this call may use the device thread."""
        if not self._busy:  # nobody holds the thread, so nobody live waits either
            self._busy = True
            self._waiting.clear()  # only calls cancelled while waiting can be left
            return
        command = priority >= PRIORITY_COMMAND
        if command and self.queued_commands >= self.max_queue:
            self.refused_busy += 1
            raise DeviceBusy(
                f"{self.name} already has {self.queued_commands} commands waiting "
                f"(max_queue {self.max_queue}); retry later"
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._seq), fut))
        self.queued_commands += command
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # the turn came with the cancellation: hand it on
            raise
        finally:
            self.queued_commands -= command

    def _release(self) -> None:
        while self._waiting:
            fut = heapq.heappop(self._waiting)[2]
            if not fut.done():
                fut.set_result(None)
                return
        self._busy = False

    async def run_sync(
        self,
        fn: Callable[[], Any],
        timeout_s: float | None = None,
        priority: int = PRIORITY_POLL,
    ) -> Any:
        """Run ``fn`` in this device's thread when its turn comes, bounded by ``timeout_s``.

        The timeout (default: the call timeout) covers ``fn`` itself, not the wait for the
        turn. The turn is handed on only when ``fn`` has really returned, so the next call's
        timeout never includes a previous call that ran past its own.
        """
        loop = asyncio.get_running_loop()
        await self._turn(priority)
        try:
            cf = self.executor.submit(fn)
        except RuntimeError:  # executor shut down (closed)
            self._release()
            raise DeviceUnavailable(f"{self.name} is closed") from None

        def done(_: Any) -> None:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody waits any more
                loop.call_soon_threadsafe(self._release)

        cf.add_done_callback(done)
        return await asyncio.wait_for(asyncio.wrap_future(cf), timeout_s or self.call_timeout_s)

    def _check_ready(self) -> None:
        if self.state != "ready":
            raise DeviceUnavailable(
                f"{self.name} is {self.state}" + (f": {self.last_error}" if self.last_error else "")
            )

    async def call(
        self,
        fn: Callable[[Any], Any],
        timeout_s: float | None = None,
        priority: int = PRIORITY_COMMAND,
    ) -> Any:
        """Run ``fn(instrument)`` in the device thread; connection-level errors fault the device.

        ``priority``: ``PRIORITY_POLL`` / ``PRIORITY_SYSTEM`` / ``PRIORITY_COMMAND``; commands
        beyond ``max_queue`` waiting are refused with DeviceBusy. A device that faulted while
        the call waited is not touched (DeviceUnavailable).
        """
        self._check_ready()

        def run() -> Any:
            if self.state != "ready":  # faulted while this call waited for its turn
                raise DeviceUnavailable(f"{self.name} is {self.state}: {self.last_error}")
            return fn(self.instrument)

        t0 = time.monotonic()
        try:
            result = await self.run_sync(run, timeout_s, priority)
        except (ConnectionLost, InstrumentTimeout, TimeoutError) as exc:
            self.errors += 1
            self._fault(str(exc) or "call timed out")
            raise
        except InstrumentError:
            self.errors += 1
            raise
        self.latency_s = time.monotonic() - t0
        return result

    def _fault(self, why: str) -> None:
        if self.state != "faulted":
            log.warning("%s faulted: %s", self.name, why)
        self.state = "faulted"
        self.last_error = why
        self._wake.set()

    async def connect_once(self) -> bool:
        """One connection attempt (connecting -> ready or faulted)."""
        self.state = "connecting"
        try:
            await self.run_sync(self.instrument.reconnect, self.call_timeout_s * 3)
        except Exception as exc:
            self.errors += 1
            self._fault(str(exc) or type(exc).__name__)
            return False
        if self.reconnects or self.last_error:
            log.info("%s ready again", self.name)
        self.state = "ready"
        self.last_error = ""
        self._backoff_s = self.backoff_initial_s
        return True

    async def poll_once(self) -> dict[str, Any]:
        """Read every monitored readable (or just the identity, as a heartbeat).

        A failing read faults the device (connection-level errors) or is counted.
        """
        if not self.monitor:
            await self.call(lambda inst: inst.query(inst.IDN_QUERY), priority=PRIORITY_POLL)
            self.polls += 1
            return {}

        def read_all(inst: Any) -> dict[str, Any]:
            return {k: fn(inst) for k, fn in self.monitor.items()}

        values = await self.call(read_all, priority=PRIORITY_POLL)
        self.polls += 1
        self.readings = values
        return values

    async def close(self) -> None:
        """Close the instrument in its thread and stop the thread."""
        with contextlib.suppress(Exception):
            await self.run_sync(self.instrument.close, 2.0)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.state = "disconnected"


class Supervisor:
    """Keep every device connected and polled; report through callbacks.

    Args:
        workers: the devices.
        on_state: ``(device, state, error)`` on each state change.
        on_readings: ``(device, readings)`` after each successful poll.
    """

    def __init__(
        self,
        workers: Mapping[str, DeviceWorker],
        on_state: Callable[[str, str, str], None] | None = None,
        on_readings: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.workers = dict(workers)
        self.on_state = on_state or (lambda d, s, e: None)
        self.on_readings = on_readings or (lambda d, r: None)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self) -> None:
        """Start one keeper task per device."""
        for w in self.workers.values():
            self._tasks.append(asyncio.create_task(self._keep(w), name=f"keep-{w.name}"))

    def states(self) -> dict[str, dict[str, Any]]:
        """Per device: state, last error, error and reconnect counts, last readings."""
        return {
            n: {
                "state": w.state,
                "error": w.last_error,
                "errors": w.errors,
                "reconnects": w.reconnects,
                "latency_s": w.latency_s,
                "readings": dict(w.readings),
            }
            for n, w in self.workers.items()
        }

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until every device is ready; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(w.state == "ready" for w in self.workers.values()):
                return True
            await asyncio.sleep(0.05)
        return False

    async def _keep(self, w: DeviceWorker) -> None:
        prev = w.state
        first = True
        while not self._stopping:
            if w.state != "ready":
                if not first:
                    w.reconnects += 1
                first = False
                ok = await w.connect_once()
                if w.state != prev:
                    self.on_state(w.name, w.state, w.last_error)
                    prev = w.state
                if not ok:
                    delay = w._backoff_s
                    w._backoff_s = min(w.backoff_max_s, w._backoff_s * 2)
                    await self._sleep(w, delay)
                    continue
            try:
                values = await w.poll_once()
                if values:
                    self.on_readings(w.name, values)
            except Exception as exc:
                log.debug("%s poll failed: %s", w.name, exc)
            if w.state != prev:
                self.on_state(w.name, w.state, w.last_error)
                prev = w.state
            if w.state == "ready":
                await self._sleep(w, w.poll_interval_s)

    async def _sleep(self, w: DeviceWorker, delay: float) -> None:
        w._wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(w._wake.wait(), timeout=delay)

    async def stop(self) -> None:
        """Stop the keepers (devices stay open; see ``close``)."""
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()

    async def close(self) -> None:
        """Close every device."""
        await asyncio.gather(*(w.close() for w in self.workers.values()))
