"""Testing helpers shipped with the channel: a WAN emulator between two endpoints on loopback.

:class:`WanEmulator` is a TCP proxy (``listen`` -> ``target``) that makes a
loopback connection behave like a long-haul link:

- **latency**: every byte is delivered ``latency_s`` after it was sent (one way);
- **bandwidth**: bytes are serialised at ``bandwidth_bps`` (per direction);
- **loss**: the proxy carries TCP, which never loses bytes, so a lost packet
  shows as what TCP does about it: each 1460-byte segment is "lost" with
  probability ``loss`` and then arrives ``retransmit_s`` late (a retransmission
  timeout), holding up everything behind it (head-of-line blocking);
- **outages**: :meth:`outage` stops delivery in one or both directions for a
  while (``"blackhole"``: bytes are held, like a cut fibre with TCP retrying;
  ``"reset"``: connections are closed and new ones refused, like a rebooted
  router); :meth:`drop_connections` closes every connection now;
- **tampering**: :meth:`tamper` flips one bit of the next segment in a direction.

It is bounded: at most ``max_buffer_bytes`` held per direction of a
connection (then it stops reading, so the sender sees backpressure) and it
stops by itself after ``lifetime_s``. Runs an asyncio loop in a daemon
thread; ``start``/``stop`` or use it as a context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Direction = Literal["up", "down", "both"]
"""``up``: client -> server (towards ``target``); ``down``: server -> client."""

SEGMENT_BYTES = 1460
"""The unit that loss, bandwidth and tampering act on (a TCP segment on Ethernet)."""


@dataclass
class _Outage:
    until: float
    direction: Direction
    mode: Literal["blackhole", "reset"]


class WanEmulator:
    """A bounded TCP proxy with latency, bandwidth cap, loss, outages and tampering.

    Args:
        target: (host, port) of the server end.
        latency_s: one-way delay added to every byte, seconds.
        bandwidth_bps: per-direction rate cap, bits per second (None: unlimited).
        loss: probability that a segment is lost and arrives ``retransmit_s`` late.
        retransmit_s: the lateness of a lost segment (TCP's retransmission timeout).
        seed: for the loss draws and tamper offsets.
        lifetime_s: the proxy closes everything after this long.
        max_buffer_bytes: bytes held per direction of a connection before reading pauses.
    """

    def __init__(
        self,
        target: tuple[str, int],
        *,
        latency_s: float = 0.0,
        bandwidth_bps: float | None = None,
        loss: float = 0.0,
        retransmit_s: float = 0.2,
        seed: int = 0,
        lifetime_s: float = 600.0,
        max_buffer_bytes: int = 16 * 2**20,
    ) -> None:
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), got {loss}")
        if latency_s < 0 or retransmit_s < 0 or lifetime_s <= 0:
            raise ValueError("latency_s, retransmit_s must be >= 0 and lifetime_s > 0")
        if bandwidth_bps is not None and bandwidth_bps <= 0:
            raise ValueError(f"bandwidth_bps must be > 0, got {bandwidth_bps}")
        self.target = target
        self.latency_s = latency_s
        self.bandwidth_bps = bandwidth_bps
        self.loss = loss
        self.retransmit_s = retransmit_s
        self.lifetime_s = lifetime_s
        self.max_buffer_bytes = max_buffer_bytes
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="wan")
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._outages: list[_Outage] = []
        self._tamper: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()
        """``connections``, ``refused``, ``bytes_up``/``bytes_down``, ``lost_segments``,
        ``tampered``, ``dropped_connections``."""
        self.port = 0
        self._stopped = threading.Event()

    # -- control (any thread) -----------------------------------------------------------
    def start(self) -> WanEmulator:
        """Listen on a free loopback port (see :attr:`port`, :attr:`address`)."""
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        fut.result(10)
        return self

    @property
    def address(self) -> str:
        """The ZeroMQ endpoint the client end should connect to."""
        return f"tcp://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Close the listener and every connection, then stop the thread."""
        if self._stopped.is_set() or not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> WanEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def outage(
        self,
        duration_s: float,
        direction: Direction = "both",
        mode: Literal["blackhole", "reset"] = "blackhole",
    ) -> None:
        """Start an outage now, lasting ``duration_s`` seconds."""
        o = _Outage(time.monotonic() + duration_s, direction, mode)
        self._outages.append(o)
        if mode == "reset":
            self.drop_connections()

    def drop_connections(self) -> None:
        """Close every open connection now (both ends see a reset)."""

        def _drop() -> None:
            for w in list(self._writers):
                self.stats["dropped_connections"] += 1
                w.transport.abort()

        self._loop.call_soon_threadsafe(_drop)

    def tamper(self, direction: Literal["up", "down"], count: int = 1) -> None:
        """Flip one bit in each of the next ``count`` segments going ``direction``."""
        self._tamper[direction] += count

    # -- internals (event loop thread) ----------------------------------------------------
    def _blocked(self, direction: Literal["up", "down"]) -> bool:
        now = time.monotonic()
        self._outages = [o for o in self._outages if o.until > now]
        return any(o.direction in (direction, "both") for o in self._outages)

    def _refusing(self) -> bool:
        now = time.monotonic()
        return any(o.mode == "reset" and o.until > now for o in self._outages)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._loop.call_later(self.lifetime_s, lambda: asyncio.ensure_future(self._close()))

    async def _close(self) -> None:
        self._stopped.set()
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        # end every connection's tasks here, so none is destroyed pending with the loop
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, r_client: asyncio.StreamReader, w_client: asyncio.StreamWriter) -> None:
        if self._refusing() or self._stopped.is_set():
            self.stats["refused"] += 1
            w_client.transport.abort()
            return
        try:
            r_server, w_server = await asyncio.open_connection(*self.target)
        except OSError:
            self.stats["refused"] += 1
            w_client.transport.abort()
            return
        self.stats["connections"] += 1
        self._writers.update((w_client, w_server))
        tasks = [
            asyncio.ensure_future(self._pump(r_client, w_server, "up")),
            asyncio.ensure_future(self._pump(r_server, w_client, "down")),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        for w in (w_client, w_server):
            self._writers.discard(w)
            w.transport.abort()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: Literal["up", "down"],
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(
            maxsize=max(1, self.max_buffer_bytes // SEGMENT_BYTES)
        )
        sender = asyncio.ensure_future(self._deliver(queue, writer, direction))
        link_free = 0.0
        last_due = 0.0
        try:
            while True:
                try:
                    data = await reader.read(65536)
                except (ConnectionError, OSError):
                    break
                if not data:
                    break
                now = time.monotonic()
                for i in range(0, len(data), SEGMENT_BYTES):
                    seg = data[i : i + SEGMENT_BYTES]
                    if self.bandwidth_bps:
                        link_free = max(link_free, now) + len(seg) * 8 / self.bandwidth_bps
                        sent = link_free
                    else:
                        sent = now
                    due = sent + self.latency_s
                    if self.loss and self._rng.random() < self.loss:
                        self.stats["lost_segments"] += 1
                        due += self.retransmit_s
                    last_due = max(last_due, due)  # TCP delivers in order
                    await queue.put((last_due, seg))
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
            await asyncio.wait([sender], timeout=self.latency_s + self.retransmit_s + 1.0)
            sender.cancel()

    async def _deliver(
        self,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        writer: asyncio.StreamWriter,
        direction: Literal["up", "down"],
    ) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            due, seg = item
            while True:
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not self._blocked(direction):
                    break
                await asyncio.sleep(0.01)
            if self._tamper[direction] > 0:
                self._tamper[direction] -= 1
                self.stats["tampered"] += 1
                b = bytearray(seg)
                pos = self._rng.randrange(len(b))
                b[pos] ^= 1 << self._rng.randrange(8)
                seg = bytes(b)
            try:
                writer.write(seg)
                await writer.drain()
            except (ConnectionError, OSError):
                return  # the other side closed: the connection's end, not an error
            self.stats[f"bytes_{direction}"] += len(seg)


@dataclass(frozen=True)
class LinkTrialReport:
    """What a :func:`run_link_trial` saw: per epoch, whether it arrived once, in order.

    ``lost`` lists epochs sent but never delivered (after every acknowledgement
    was awaited), ``duplicates`` counts deliveries beyond one per epoch,
    ``disordered`` deliveries whose epoch was not larger than the previous one.
    ``replies_lost``/``replies_duplicated`` the same for the analysing side's
    replies. The two endpoints' counters and the emulator's statistics are
    included as they were at the end.
    """

    epochs_sent: int
    epochs_delivered: int
    lost: list[int]
    duplicates: int
    disordered: int
    replies_lost: list[int]
    replies_duplicated: int
    all_acknowledged: bool
    duration_s: float
    sender: dict[str, int]
    receiver: dict[str, int]
    wan: dict[str, int]

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing twice, nothing out of order, everything acknowledged."""
        return (
            not self.lost
            and not self.duplicates
            and not self.disordered
            and not self.replies_lost
            and not self.replies_duplicated
            and self.all_acknowledged
        )


def run_link_trial(
    key_dir: Path,
    *,
    n_epochs: int = 40,
    epoch_interval_s: float = 0.1,
    events_per_epoch: int = 2000,
    latency_s: float = 0.02,
    bandwidth_bps: float | None = 10e6,
    loss: float = 0.01,
    outage_s: float = 3.0,
    outage_after_epoch: int = 10,
    outage_mode: Literal["blackhole", "reset"] = "blackhole",
    tamper_after_epoch: int | None = None,
    seed: int = 1,
    timeout_s: float = 120.0,
) -> LinkTrialReport:
    """Run two channel ends through a :class:`WanEmulator` and count every epoch.

    The sending side (client, "alice") sends ``n_epochs`` epochs of
    ``events_per_epoch`` Poisson times and random bases, one every
    ``epoch_interval_s``; the analysing side (server, "bob") answers each with
    a pair reply. After ``outage_after_epoch`` epochs the emulator has an
    outage of ``outage_s``; after ``tamper_after_epoch`` one bit of the next
    segment each way is flipped. Then it waits (up to ``timeout_s``) until
    both sides have every message acknowledged, and reports.
    """
    import numpy as np

    from ._endpoint import ChannelEndpoint
    from ._keys import generate_keys, load_key_pair
    from ._messages import PairReply, TimeBasisEpoch

    key_dir.mkdir(parents=True, exist_ok=True)
    a_sec = generate_keys("alice", key_dir, overwrite=True)[1]
    b_sec = generate_keys("bob", key_dir, overwrite=True)[1]
    ka, kb = load_key_pair(a_sec), load_key_pair(b_sec)
    rng = np.random.default_rng(seed)
    t_start = time.monotonic()
    received: list[int] = []
    replies: list[int] = []
    with (
        ChannelEndpoint(
            role="server",
            address="tcp://127.0.0.1:0",
            keys=kb,
            peer_public_key=ka.public,
            link="trial",
        ) as bob,
    ):
        port = int(bob.address.rsplit(":", 1)[1])
        wan = WanEmulator(
            ("127.0.0.1", port),
            latency_s=latency_s,
            bandwidth_bps=bandwidth_bps,
            loss=loss,
            seed=seed,
            lifetime_s=timeout_s + n_epochs * epoch_interval_s + outage_s + 60,
        )
        with (
            wan,
            ChannelEndpoint(
                role="client", address=wan.address, keys=ka, peer_public_key=kb.public, link="trial"
            ) as alice,
        ):
            span = 10**12 * epoch_interval_s
            rate = events_per_epoch / span

            def pump() -> None:
                while (m := bob.receive(0)) is not None:
                    if isinstance(m, TimeBasisEpoch):
                        received.append(m.epoch)
                        n = m.times_ps.size
                        idx = np.flatnonzero(rng.random(n) < 0.05)
                        bob.send(PairReply(m.epoch, n, idx, rng.integers(0, 2, idx.size)))
                while (m := alice.receive(0)) is not None:
                    if isinstance(m, PairReply):
                        replies.append(m.epoch)

            for e in range(n_epochs):
                begin = int(e * span)
                end = int((e + 1) * span)
                gaps = rng.exponential(1.0 / rate, events_per_epoch)
                t = begin + np.cumsum(gaps).astype(np.int64)
                t = t[t < end]
                alice.send(TimeBasisEpoch(e, begin, end, 125, t, rng.integers(0, 2, t.size)))
                if e == outage_after_epoch and outage_s > 0:
                    wan.outage(outage_s, mode=outage_mode)
                if tamper_after_epoch is not None and e == tamper_after_epoch:
                    wan.tamper("up")
                    wan.tamper("down")
                deadline = time.monotonic() + epoch_interval_s
                while time.monotonic() < deadline:
                    pump()
                    time.sleep(0.005)
            deadline = time.monotonic() + timeout_s
            done = False
            while time.monotonic() < deadline:
                pump()
                if (
                    len(set(received)) >= n_epochs
                    and len(set(replies)) >= len(set(received))
                    and alice.counters().get("unacked", 0) == 0
                    and bob.counters().get("unacked", 0) == 0
                ):
                    done = True
                    break
                time.sleep(0.02)
            time.sleep(0.2)
            pump()
            sender, receiver = alice.counters(), bob.counters()
            wan_stats = dict(wan.stats)
    disordered = sum(1 for a, b in itertools.pairwise(received) if b <= a)
    return LinkTrialReport(
        epochs_sent=n_epochs,
        epochs_delivered=len(received),
        lost=sorted(set(range(n_epochs)) - set(received)),
        duplicates=len(received) - len(set(received)),
        disordered=disordered,
        replies_lost=sorted(set(received) - set(replies)),
        replies_duplicated=len(replies) - len(set(replies)),
        all_acknowledged=done,
        duration_s=time.monotonic() - t_start,
        sender=sender,
        receiver=receiver,
        wan=wan_stats,
    )
