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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from drivers import ConnectionLost, InstrumentError, InstrumentTimeout

log = logging.getLogger("qnet.supervisor")

STATES = ("disconnected", "connecting", "ready", "faulted")


class DeviceUnavailable(Exception):
    """The device is not ready (faulted or still connecting); the message says why."""


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

    async def run_sync(self, fn: Callable[[], Any], timeout_s: float | None = None) -> Any:
        """Run ``fn`` in this device's thread, bounded by ``timeout_s`` (default call timeout)."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.executor, fn)
        return await asyncio.wait_for(fut, timeout_s or self.call_timeout_s)

    async def call(self, fn: Callable[[Any], Any], timeout_s: float | None = None) -> Any:
        """Run ``fn(instrument)`` in the device thread; connection-level errors fault the device."""
        if self.state != "ready":
            raise DeviceUnavailable(
                f"{self.name} is {self.state}" + (f": {self.last_error}" if self.last_error else "")
            )
        t0 = time.monotonic()
        try:
            result = await self.run_sync(lambda: fn(self.instrument), timeout_s)
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
            await self.call(lambda inst: inst.query(inst.IDN_QUERY))
            return {}

        def read_all(inst: Any) -> dict[str, Any]:
            return {k: fn(inst) for k, fn in self.monitor.items()}

        values = await self.call(read_all)
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
