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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Iterable

import aiomqtt

from ._outbox import Outbox
from ._schema import Record, SchemaError, make, status_topic, telemetry_topic, validate
from ._settings import BrokerSettings, PublisherSettings, SettingsError

log = logging.getLogger("qnet.telemetry.publisher")


def status_payload(node: str, online: bool, session: int) -> bytes:
    """The JSON body of a node's retained status (birth when online, death when not)."""
    body = {"node": node, "online": online, "session": session, "time_ns": time.time_ns()}
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

    def __init__(self, settings: PublisherSettings) -> None:
        self.settings = settings
        self.node = settings.node
        ob = settings.outbox
        self.outbox = Outbox(ob.path, ob.max_records, ob.policy)
        self.published = 0
        self.reconnects = 0
        self.connected = False
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, records: Iterable[Record]) -> list[int]:
        """Validate records of this node and store them in the outbox; return their ``seq``s.

        Safe to call from any thread; durable once it returns.
        """
        items: list[tuple[str, Record]] = []
        for rec in records:
            validate(rec)
            if rec.node != self.node:  # validate() made sure the tag is there
                raise SchemaError(
                    f"record of node {rec.node!r} given to the publisher of node {self.node!r}"
                )
            items.append((telemetry_topic(self.node, rec.measurement), rec))
        seqs = self.outbox.append(items)
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
        return make(
            "telemetry",
            {"node": self.node},
            {
                "outbox_records": len(self.outbox),
                "outbox_dropped": self.outbox.dropped,
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
        return self._task

    async def wait_drained(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty (everything acknowledged); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while len(self.outbox) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not len(self.outbox)

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
            self._task = None
            self.outbox.close()

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
                    await c.publish(topic, status_payload(self.node, True, session), 1, True)
                    await self._drain(c)
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
            finally:
                self.connected = False

    async def _wait_stop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.05)

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

    async def _drain(self, client: aiomqtt.Client) -> None:
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
            rows = self.outbox.peek(window)
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
            self.outbox.remove(acked)  # what was not acknowledged stays, sent again later
            self.published += len(acked)
            if lost:
                raise aiomqtt.MqttError("connection lost with messages in flight")
            for task in tasks:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
