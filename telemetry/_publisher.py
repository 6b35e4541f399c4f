"""The node's telemetry publisher: records -> durable outbox -> MQTT (QoS 1), birth/death status.

Every record is written to the SQLite outbox *first* (``submit``) and deleted only after the
broker's PUBACK, so nothing is lost while the broker is unreachable or across a publisher
restart. The sender task drains the outbox in ``seq`` order, packing consecutive records of one
measurement into one message (multi-line InfluxDB line protocol, parsed by Telegraf's stock
``influx`` parser), keeps up to ``inflight`` messages unacknowledged, and reconnects with
exponential backoff and jitter (aiomqtt 2.x does not reconnect by itself).

Liveness, in the spirit of Sparkplug's birth/death: on connect a retained ``online`` status is
published to ``qnet/v1/<node>/status``; the MQTT will (also retained) sets it ``offline`` when
the connection dies; a clean close publishes ``offline`` itself. Both carry the same ``session``
number so a late death can be told from the current birth.

Storage errors (disk full, read-only or failing disk) never end the publisher. What
``submit`` *accepted* (returned without raising) is never dropped by a storage error: it is
either in the outbox (its ``seq`` returned) or, while the outbox cannot store, held in memory
in order (up to ``memory_max_records``; an empty ``seq`` list is returned for it) and written
to the outbox by the storage upkeep as soon as the outbox stores again (retried with backoff).
Beyond that bound ``submit`` raises ``OutboxUnavailable`` and counts the records in
``refused``: they were not accepted. Held records survive a storage error, not a process kill
while the disk stays unusable. Acknowledged rows that cannot be deleted are remembered and
not sent again. While storage fails the publisher is *stalled*: the cause is logged once,
the retained status says ``healthy: false`` with the problem, and a ``health`` record of
device ``telemetry`` (``ok=false, state=stalled``) is published straight to the broker as the
alarm (it cannot wait in the outbox); recovery is logged once and published the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import aiomqtt

from ._outbox import Outbox, OutboxError
from ._schema import Record, SchemaError, make, status_topic, telemetry_topic, to_line, validate
from ._settings import BrokerSettings, PublisherSettings, SettingsError

log = logging.getLogger("qnet.telemetry.publisher")

#: Wait between attempts to use a failing outbox again, s (exponential backoff with jitter).
STORAGE_RETRY_S = (0.2, 5.0)
#: Records ``submit`` holds in memory, in order, while the outbox cannot store them.
MEMORY_MAX_RECORDS = 50_000
#: Records written per transaction when the held records go to the outbox.
FLUSH_CHUNK = 200
#: Failed storage retries after which the outbox's connection is reopened.
REOPEN_EVERY = 3
#: Free space the outbox's file system needs before a stall counts as over, bytes. On a
#: full disk some writes still succeed (SQLite reuses its WAL file's space), so without it
#: the health would flap between stalled and ok.
RESUME_MIN_FREE_BYTES = 1024 * 1024


class OutboxUnavailable(OutboxError):
    """``submit`` refused records: the outbox cannot store and the memory buffer is full."""


def status_payload(
    node: str, online: bool, session: int, healthy: bool = True, problem: str | None = None
) -> bytes:
    """The JSON body of a node's retained status (birth when online, death when not).

    ``healthy`` is false (with ``problem`` saying why) while the node's telemetry is stalled.
    """
    body: dict[str, Any] = {
        "node": node,
        "online": online,
        "healthy": healthy and online,
        "session": session,
        "time_ns": time.time_ns(),
    }
    if problem:
        body["problem"] = problem
    return json.dumps(body, separators=(",", ":")).encode()


def mqtt_client(
    broker: BrokerSettings, *, will: aiomqtt.Will | None = None, inflight: int = 20
) -> aiomqtt.Client:
    """An aiomqtt client for ``broker``: fixed id, persistent session (v3.1.1), auth and TLS."""
    return aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=broker.client_id,
        clean_session=False,
        protocol=aiomqtt.ProtocolVersion.V311,
        username=broker.username,
        password=broker.password_value(),
        tls_context=broker.tls.context() if broker.tls else None,
        keepalive=broker.keepalive_s,
        will=will,
        timeout=10,
        max_inflight_messages=inflight,
    )


async def _until_done_or_lost(client: aiomqtt.Client, tasks: list[asyncio.Task[None]]) -> bool:
    """Wait for every publish in ``tasks``; True (the rest cancelled) if the connection drops.

    aiomqtt leaves a QoS 1 publish waiting for its PUBACK until its own timeout even when the
    connection is already gone, so without this a broker outage goes unnoticed for that long.
    """
    lost = client._disconnected  # private, but aiomqtt's own message iterator races it too
    everything = asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.wait({everything, lost}, return_when=asyncio.FIRST_COMPLETED)
    if everything.done():
        return False
    for task in tasks:
        task.cancel()
    await everything
    return True


def backoff_s(attempt: int, lo: float, hi: float) -> float:
    """Exponential backoff with full jitter: uniform in [lo, min(hi, lo * 2**attempt)]."""
    return random.uniform(lo, min(hi, lo * 2 ** min(attempt, 30)))


class Publisher:
    """Publish records of one node with QoS 1 through a durable outbox (see module docstring)."""

    def __init__(
        self, settings: PublisherSettings, *, memory_max_records: int = MEMORY_MAX_RECORDS
    ) -> None:
        self.settings = settings
        self.node = settings.node
        ob = settings.outbox
        self.outbox = Outbox(ob.path, ob.max_records, ob.policy)  # OutboxError names the path
        self.memory_max_records = memory_max_records
        self.published = 0
        self.reconnects = 0
        self.refused = 0
        self.stalls = 0
        self.connected = False
        #: Called on the event loop with :meth:`health` whenever the publisher stalls or recovers.
        self.on_health: Callable[[dict[str, Any]], None] | None = None
        self.storage_error: str | None = None
        self._stalled_since: float | None = None
        self._logged_cause: str | None = None
        self._state_lock = threading.Lock()
        self._held: deque[tuple[str, Record]] = deque()  # accepted, not yet in the outbox
        self._held_lock = threading.Lock()
        self._unremoved: set[int] = set()  # acknowledged, not yet deleted from the outbox
        self._unremoved_lock = threading.Lock()
        self._alarms: deque[Record] = deque(maxlen=20)  # health records sent outside the outbox
        self._health_version = 0
        self._status_sent = -1  # the health version the retained status shows
        self._wake = asyncio.Event()
        self._stalled = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._storage_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def stalled(self) -> bool:
        """True while the outbox cannot store, read or delete (see the module docstring)."""
        return self._stalled_since is not None

    def pending(self) -> int:
        """Accepted records not yet acknowledged by the broker (outbox and memory)."""
        return len(self.outbox) - len(self._unremoved) + len(self._held)

    def health(self) -> dict[str, Any]:
        """Whether telemetry flows: ``ok``, the stall's cause and age (s), held and refused."""
        since = self._stalled_since
        return {
            "ok": since is None,
            "state": "ok" if since is None else "stalled",
            "error": self.storage_error if since is not None else None,
            "stalled_s": 0.0 if since is None else time.monotonic() - since,
            "held": len(self._held),
            "refused": self.refused,
            "outbox_records": len(self.outbox),
            "connected": self.connected,
        }

    def _stall(self, exc: OutboxError) -> None:
        """Note a storage error (any thread): its cause is logged once, health goes bad.

        "Once" per distinct cause (SQLite's message, e.g. "database or disk is full"),
        whichever operation met it, until the outbox works again.
        """
        cause = str(exc)
        key = str(exc.__cause__ or exc)
        with self._state_lock:
            first = self._stalled_since is None
            self.storage_error = cause
            if first:
                self._stalled_since = time.monotonic()
                self.stalls += 1
            new_cause = key != self._logged_cause
            self._logged_cause = key
        if new_cause:
            log.error(
                "telemetry stalled: %s; records are held in memory (up to %d) and stored "
                "once the outbox works again (retrying with backoff)",
                cause,
                self.memory_max_records,
            )
        if first:
            self._health_changed(ok=False, message=cause)

    def _recover(self) -> None:
        """The outbox works again (called on the loop by the storage upkeep)."""
        with self._state_lock:
            since, self._stalled_since = self._stalled_since, None
            self._logged_cause = None
        if since is None:
            return
        log.warning(
            "telemetry resumed: outbox %s stores again after %.1f s (%d records refused meanwhile)",
            self.outbox.path,
            time.monotonic() - since,
            self.refused,
        )
        self._health_changed(ok=True, message="outbox stores again")

    def _health_changed(self, ok: bool, message: str) -> None:
        self._alarms.append(
            make(
                "health",
                {"node": self.node, "device": "telemetry"},
                {"ok": ok, "state": "ok" if ok else "stalled", "message": message[:1000]},
                time.time_ns(),
            )
        )
        self._health_version += 1
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # always deferred: the caller may hold a lock that the callback's submit needs
            loop.call_soon_threadsafe(self._notify)

    def _notify(self) -> None:
        self._wake.set()
        if self.stalled:
            self._stalled.set()
        if self.on_health is not None:
            try:
                self.on_health(self.health())
            except Exception:
                log.exception("telemetry health callback failed")

    def submit(self, records: Iterable[Record]) -> list[int]:
        """Validate records of this node and store them in the outbox; return their ``seq``s.

        Safe to call from any thread; durable once it returns with ``seq``s. While the outbox
        cannot store, records are held in memory (an empty list is returned) up to
        ``memory_max_records``; beyond it ``OutboxUnavailable`` is raised and they count as
        ``refused`` (see the module docstring).
        """
        items: list[tuple[str, Record]] = []
        for rec in records:
            validate(rec)
            if rec.node != self.node:  # validate() made sure the tag is there
                raise SchemaError(
                    f"record of node {rec.node!r} given to the publisher of node {self.node!r}"
                )
            items.append((telemetry_topic(self.node, rec.measurement), rec))
        seqs: list[int] | None = None
        with self._held_lock:
            if not self._held:  # else the outbox comes after the held records, in order
                try:
                    seqs = self.outbox.append(items)
                except OutboxError as exc:
                    self._stall(exc)
            if seqs is None:
                if len(self._held) + len(items) > self.memory_max_records:
                    self.refused += len(items)
                    raise OutboxUnavailable(
                        f"{len(items)} records refused: the outbox cannot store "
                        f"({self.storage_error}) and {len(self._held)} records are already "
                        f"held in memory (memory_max_records {self.memory_max_records})"
                    )
                self._held.extend(items)
                seqs = []
        loop = self._loop
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if loop is None or on_loop:
            self._wake.set()
        else:  # submitted from another thread (e.g. an acquisition worker)
            loop.call_soon_threadsafe(self._wake.set)
        return seqs

    def counters_record(self, time_ns: int) -> Record:
        """The publisher's own counters as a ``telemetry`` record (submit it periodically)."""
        try:
            dropped: int | None = self.outbox.dropped
        except OutboxError:
            dropped = None
        return make(
            "telemetry",
            {"node": self.node},
            {
                "outbox_records": len(self.outbox),
                "outbox_dropped": dropped,
                "published": self.published,
                "reconnects": self.reconnects,
            },
            time_ns,
        )

    def start(self) -> asyncio.Task[None]:
        """Start the sender task (connect, drain, reconnect) on the running loop."""
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self.run(), name="qnet-publisher")
            self._storage_task = self._loop.create_task(
                self._storage_upkeep(), name="qnet-publisher-storage"
            )
            if self.stalled:  # a submit failed before start
                self._notify()
        return self._task

    async def wait_drained(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty (everything acknowledged); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.pending() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self.pending()

    async def close(self, drain_s: float = 5.0) -> None:
        """Drain for up to ``drain_s``, publish the offline status, disconnect; rows stay stored."""
        try:
            if self._task is not None:
                await self.wait_drained(drain_s)
                self._stopping = True
                self._wake.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        finally:
            self._stopping = True
            if self._storage_task is not None:
                self._storage_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._storage_task
                self._storage_task = None
            self._task = None
            if self._held or self._unremoved:
                self._try_storage()  # a last chance for what is held in memory
            if self._held:
                log.error(
                    "closing with %d accepted records the outbox could not store (%s): lost",
                    len(self._held),
                    self.storage_error,
                )
            self.outbox.close()

    async def _storage_upkeep(self) -> None:
        """While stalled: retry the outbox with backoff (held rows first), then recover."""
        attempt = 0
        lo, hi = STORAGE_RETRY_S
        while not self._stopping:
            if not self.stalled:
                attempt = 0
                self._stalled.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stalled.wait(), timeout=0.5)
                continue
            await asyncio.sleep(backoff_s(attempt, lo, hi))
            try:
                ok = await asyncio.to_thread(self._try_storage)
            except Exception:  # a bug must not end the retries silently
                log.exception("telemetry storage upkeep failed; retrying")
                ok = False
            if ok:
                self._recover()
                attempt = 0
                continue
            attempt += 1
            if attempt % REOPEN_EVERY == 0:  # the connection itself may be what is broken
                try:
                    await asyncio.to_thread(self.outbox.reopen)
                except OutboxError as exc:
                    self._stall(exc)

    def _try_storage(self) -> bool:
        """Delete acknowledged rows, store held ones, read: True if the outbox works again."""
        try:
            with self._unremoved_lock:
                todo = sorted(self._unremoved)
            if todo:
                self.outbox.remove(todo)
                with self._unremoved_lock:
                    self._unremoved.difference_update(todo)
            with self._held_lock:
                while self._held:
                    chunk = list(itertools.islice(self._held, FLUSH_CHUNK))
                    self.outbox.append(chunk)
                    for _ in chunk:
                        self._held.popleft()
            self.outbox.peek(1)
        except OutboxError as exc:
            self._stall(exc)
            return False
        try:
            free = shutil.disk_usage(self.outbox.path.parent).free
        except OSError:
            return True  # cannot tell: the operations above worked
        return free >= RESUME_MIN_FREE_BYTES

    async def run(self) -> None:
        """Connect, publish birth, drain the outbox; on any MQTT error back off and reconnect."""
        attempt = 0
        broker = self.settings.broker
        topic = status_topic(self.node)
        while not self._stopping:
            session = time.time_ns()
            will = aiomqtt.Will(topic, status_payload(self.node, False, session), 1, True)
            try:
                client = mqtt_client(broker, will=will, inflight=self.settings.inflight)
                client.pending_calls_threshold = 2 * self.settings.inflight + 10
                async with client as c:
                    self.connected = True
                    attempt = 0
                    log.info(
                        "connected to %s:%d as %s; %d records in outbox",
                        broker.host,
                        broker.port,
                        broker.client_id,
                        len(self.outbox),
                    )
                    self._status_sent = -1  # the birth below carries the current health
                    await self._drain(c, session)
                    await c.publish(topic, status_payload(self.node, False, session), 1, True)
                    return
            except (aiomqtt.MqttError, SettingsError) as exc:
                self.connected = False
                if self._stopping:
                    return
                if isinstance(exc, SettingsError):  # a missing password or TLS file
                    delay = broker.reconnect_max_s
                    log.error(
                        "cannot connect to broker %s:%d: %s; fix the broker settings. "
                        "%d records kept in outbox, retry in %.0f s",
                        broker.host,
                        broker.port,
                        exc,
                        len(self.outbox),
                        delay,
                    )
                else:
                    self.reconnects += 1
                    delay = backoff_s(attempt, broker.reconnect_min_s, broker.reconnect_max_s)
                    attempt += 1
                    log.warning(
                        "broker %s:%d unreachable (%s); %d records kept in outbox, retry in %.2f s",
                        broker.host,
                        broker.port,
                        exc,
                        len(self.outbox),
                        delay,
                    )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wait_stop(), timeout=delay)
            except Exception as exc:  # a bug must not end the telemetry silently either
                self.connected = False
                if self._stopping:
                    return
                delay = backoff_s(attempt, broker.reconnect_min_s, broker.reconnect_max_s)
                attempt += 1
                log.exception("publisher failed (%s); restarting it in %.2f s", exc, delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wait_stop(), timeout=delay)
            finally:
                self.connected = False

    async def _send_health(self, client: aiomqtt.Client, session: int) -> None:
        """Publish the current health on the retained status, and the pending alarms."""
        version = self._health_version
        if version == self._status_sent:
            return
        topic = status_topic(self.node)
        problem = f"telemetry stalled: {self.storage_error}" if self.stalled else None
        payload = status_payload(self.node, True, session, not self.stalled, problem)
        await client.publish(topic, payload, 1, True, timeout=10)
        while self._alarms:
            rec = self._alarms[0]
            await client.publish(telemetry_topic(self.node, rec.measurement), to_line(rec), 1)
            self._alarms.popleft()
        self._status_sent = version

    async def _wait_stop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.05)

    def _forget(self, acked: list[int]) -> None:
        """Delete acknowledged rows; if the outbox cannot, remember them (not sent again)."""
        if not self.stalled:
            try:
                self.outbox.remove(acked)
                return
            except OutboxError as exc:
                self._stall(exc)
        with self._unremoved_lock:
            self._unremoved.update(acked)

    def _messages(self, rows: list[tuple[int, str, str]]) -> list[tuple[str, bytes, list[int]]]:
        """Pack consecutive rows of one topic into messages bounded in lines and bytes."""
        out: list[tuple[str, bytes, list[int]]] = []
        max_lines = self.settings.max_lines_per_message
        max_bytes = self.settings.max_message_bytes
        cur_topic = ""
        cur_lines: list[str] = []
        cur_seqs: list[int] = []
        size = 0
        for seq, topic, line in rows:
            if cur_lines and (
                topic != cur_topic or len(cur_lines) >= max_lines or size + len(line) > max_bytes
            ):
                out.append((cur_topic, "\n".join(cur_lines).encode(), cur_seqs))
                cur_lines, cur_seqs, size = [], [], 0
            cur_topic = topic
            cur_lines.append(line)
            cur_seqs.append(seq)
            size += len(line) + 1
        if cur_lines:
            out.append((cur_topic, "\n".join(cur_lines).encode(), cur_seqs))
        return out

    async def _drain(self, client: aiomqtt.Client, session: int) -> None:
        """Publish the outbox in order until stopping; each acked message's rows are deleted.

        Once ``close`` has given up waiting, the round in flight ends the drain: what is left
        stays in the outbox for the next start.
        """
        window = self.settings.max_lines_per_message * self.settings.inflight
        # at most ``inflight`` publishes issued at once: each one's timeout starts when it is
        # issued, so a long queue inside paho would time out on a slow link
        gate = asyncio.Semaphore(self.settings.inflight)

        async def send(topic: str, payload: bytes) -> None:
            async with gate:
                await client.publish(topic, payload, 1, timeout=10)

        while not self._stopping:
            await self._send_health(client, session)
            try:
                with self._unremoved_lock:
                    skip = set(self._unremoved)
                rows = self.outbox.peek(window + len(skip))
            except OutboxError as exc:
                self._stall(exc)
                rows = None
            if rows is None:  # cannot read: the storage upkeep retries
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.5)
                continue
            if skip:  # acknowledged already, not yet deleted: never sent twice
                rows = [r for r in rows if r[0] not in skip][:window]
            if not rows:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.5)
                continue
            msgs = self._messages(rows)
            tasks = [asyncio.ensure_future(send(t, p)) for t, p, _ in msgs]
            lost = await _until_done_or_lost(client, tasks)
            acked = [
                s
                for (_, _, seqs), task in zip(msgs, tasks, strict=True)
                if not task.cancelled() and task.exception() is None
                for s in seqs
            ]
            # what was not acknowledged stays, sent again later
            self.published += len(acked)
            if acked:
                self._forget(acked)
            if lost:
                raise aiomqtt.MqttError("connection lost with messages in flight")
            for task in tasks:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
