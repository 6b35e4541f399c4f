"""The thin I/O layer around the engine: a channel endpoint, a tag queue, an asyncio loop.

``LinkPump.step`` takes what the peer sent and what the tagger gave, runs the engine
and sends its messages (holding them while the channel pushes back). ``run_link`` is
the asyncio task a daemon runs: the engine's work (pairing, Cascade) runs in a
worker thread, one step at a time, so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from typing import Any

from channel import ChannelEndpoint, ChannelFullError, Message
from coincidence import TagBatch

from ._engine import AnalyserLink, LinkReport, SenderLink

log = logging.getLogger("qnet.link")


class LinkPump:
    """Drives one site's engine over its channel endpoint (``offer`` is thread-safe)."""

    def __init__(self, engine: SenderLink | AnalyserLink, endpoint: ChannelEndpoint) -> None:
        self.engine = engine
        self.endpoint = endpoint
        self._tags: queue.Queue[TagBatch] = queue.Queue()
        self._out: deque[Message] = deque()
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._last: tuple[float, int, int] = (self._t0, 0, 0)
        self.bytes_per_s = (0.0, 0.0)
        self.rejected_batches = 0

    def offer(self, batch: TagBatch) -> None:
        """Queue this site's next tag batch (from the acquisition, any thread)."""
        self._tags.put(batch)

    @property
    def backlog(self) -> int:
        """Tag batches and outgoing messages not handled yet."""
        return self._tags.qsize() + len(self._out)

    def step(self, timeout_s: float = 0.05) -> int:
        """Handle what is waiting (at most ``timeout_s`` for the first message); count handled."""
        with self._lock:
            n = 0
            while (msg := self.endpoint.receive(0)) is not None:
                self._out.extend(self.engine.receive(msg))
                n += 1
            while True:
                try:
                    batch = self._tags.get_nowait()
                except queue.Empty:
                    break
                try:
                    self._out.extend(self.engine.feed_tags(batch))
                except ValueError as e:  # e.g. the tagger's clock went back: refuse the batch
                    self.rejected_batches += 1
                    self.engine.last_error = f"tag batch refused: {e}"
                    log.warning("link %s: %s", self.engine.cfg.link, self.engine.last_error)
                n += 1
            self._send()
        if n == 0 and not self._out:
            msg = self.endpoint.receive(timeout_s)
            if msg is not None:
                with self._lock:
                    self._out.extend(self.engine.receive(msg))
                    self._send()
                n += 1
        return n

    def _send(self) -> None:
        while self._out:
            try:
                self.endpoint.send(self._out[0])
            except ChannelFullError:
                return  # backpressure: keep the rest for the next step
            self._out.popleft()

    def report(self) -> tuple[LinkReport, dict[str, Any]]:
        """The engine's report and the channel's counters with bytes per second since last call."""
        with self._lock:
            rep = self.engine.report()
        counters: dict[str, Any] = dict(self.endpoint.counters())
        now = time.monotonic()
        t, sent, recv = self._last
        dt = max(now - t, 1e-9)
        tx, rx = counters.get("bytes_sent", 0), counters.get("bytes_received", 0)
        self.bytes_per_s = ((tx - sent) / dt, (rx - recv) / dt)
        self._last = (now, tx, rx)
        counters["bytes_sent_per_s"] = self.bytes_per_s[0]
        counters["bytes_received_per_s"] = self.bytes_per_s[1]
        counters["connected"] = int(self.endpoint.connected)
        return rep, counters


async def run_link(pump: LinkPump, stop: asyncio.Event, *, step_s: float = 0.05) -> None:
    """Run ``pump`` until ``stop`` is set; each step in a worker thread."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(pump.step, step_s)
        except Exception as e:  # never let one bad step end the link's upkeep
            pump.engine.last_error = f"link step failed: {e!r}"
            log.exception("link %s: step failed", pump.engine.cfg.link)
            await asyncio.sleep(1.0)
