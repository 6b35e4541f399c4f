"""The MQTT -> InfluxDB bridge that loses nothing (``qnet bridge CONFIG``).

Three threads, one direction, every hop bounded and durable::

    paho network thread ──(bounded queue)──> spool thread ──(SQLite spool)──> writer thread ──> DB
      manual ack, QoS 1                      validate, commit, then PUBACK     sync write + retry

* The MQTT session is persistent (fixed client id, clean session off, QoS 1) and acknowledgement
  is manual (paho-mqtt ``manual_ack``; aiomqtt acknowledges on receipt, which cannot survive a
  kill): a message is PUBACKed only after it is committed to the spool. A SIGKILL at any moment
  loses nothing: unacknowledged messages are redelivered by the broker, spooled rows are written
  on the next start.
* Spool rows are deleted only after the database confirmed a *synchronous* write
  (influxdb-client ``SYNCHRONOUS`` write API; its batching mode is not used because it drops data
  on close and after its retries run out). Failed writes are retried with backoff, for ever.
* Replays (redelivered messages, a batch written again after a kill) are harmless: a point's
  identity is measurement + tags + timestamp, so it overwrites itself.
* Backpressure, not memory: when the spool is full the spool thread stops, the bounded queue
  fills, the network thread stops reading and the broker keeps the rest in the session.
* Malformed, oversized or foreign (node tag != topic node) payloads are logged, counted,
  acknowledged and dropped; the bridge keeps running.
* With ``nodes`` configured, telemetry of any other "node" (a topic the broker let some
  user publish) is acknowledged and dropped, counted, and logged once per unknown node.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import paho.mqtt.client as mqtt

from ._outbox import Spool
from ._schema import LineProtocolError, PayloadChecker, parse_telemetry_topic
from ._settings import BridgeSettings

log = logging.getLogger("qnet.telemetry.bridge")


_Pending = tuple[int, int, int, "tuple[int, str] | None"]  # generation, mid, qos, spool row


class PayloadRejected(ValueError):
    """A telemetry message that the bridge drops: says why."""


@dataclass
class BridgeStats:
    """Counters of one bridge process (all since start)."""

    messages_received: int = 0
    messages_spooled: int = 0
    messages_dropped: int = 0
    points_spooled: int = 0
    points_written: int = 0
    points_rejected_by_db: int = 0
    write_batches: int = 0
    write_failures: int = 0
    stale_acks_skipped: int = 0
    connects: int = 0
    unknown_node_messages: int = 0


def check_payload(
    topic: str, payload: bytes, max_bytes: int, checker: PayloadChecker | None = None
) -> tuple[int, str]:
    """Validate one telemetry message; return ``(npoints, line protocol)`` or raise PayloadRejected.

    The payload must be UTF-8 InfluxDB line protocol whose every line passes the schema, whose
    measurement is the topic's and whose ``node`` tag is the topic's node (the broker's ACL
    guarantees the topic belongs to the publisher, this guarantees the points do).
    """
    if len(payload) > max_bytes:
        raise PayloadRejected(f"{len(payload)} bytes > max_payload_bytes {max_bytes}")
    try:
        node, measurement = parse_telemetry_topic(topic)
    except ValueError as exc:
        raise PayloadRejected(str(exc)) from None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadRejected(f"not UTF-8: {exc}") from None
    try:
        npoints = (checker or PayloadChecker()).check(text, measurement, node)
    except LineProtocolError as exc:
        raise PayloadRejected(str(exc)) from None
    if not npoints:
        raise PayloadRejected("no points in payload")
    if "#" in text or "\n\n" in text or text.endswith("\n"):
        text = "\n".join(ln for ln in text.split("\n") if ln and not ln.startswith("#"))
    return npoints, text


class Bridge:
    """Subscribe to telemetry, spool durably, write to an InfluxDB v2 write API, then forget."""

    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings
        self.stats = BridgeStats()
        self.spool = Spool(settings.spool.path, settings.spool.max_messages)
        self._queue: queue.Queue[tuple[int, int, int, str, bytes]] = queue.Queue(
            maxsize=settings.queue_messages
        )
        self._generation = 0
        self._known_nodes = None if settings.nodes is None else frozenset(settings.nodes)
        self._unknown_logged: set[str] = set()
        self._stop_intake = threading.Event()
        self._stop_writer = threading.Event()
        self._spooled = threading.Event()
        self._give_up = threading.Event()
        self._threads: list[threading.Thread] = []
        self.connected = threading.Event()
        b = settings.broker
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=b.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if b.username is not None:
            c.username_pw_set(b.username, b.password_value())
        if b.tls is not None:
            c.tls_set_context(b.tls.context())
        c.reconnect_delay_set(
            min_delay=max(1, int(b.reconnect_min_s)), max_delay=max(1, int(b.reconnect_max_s))
        )
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self._mqtt = c

    # -- MQTT callbacks (paho network thread) -------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if rc.is_failure:
            log.warning("broker refused connection: %s", rc)
            return
        self._generation += 1
        self.stats.connects += 1
        b = self.settings.broker
        log.info(
            "connected to %s:%d as %s (session present: %s)",
            b.host,
            b.port,
            b.client_id,
            getattr(_f, "session_present", "?"),
        )
        client.subscribe([(t, 1) for t in self.settings.topics])
        self.connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        self.connected.clear()
        if not self._stop_intake.is_set():
            log.warning("disconnected from broker (%s); paho reconnects", rc)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        item = (self._generation, msg.mid, msg.qos, msg.topic, bytes(msg.payload))
        while not self._stop_intake.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue  # backpressure: the network thread waits, the broker keeps the rest

    # -- spool thread ------------------------------------------------------------------------

    def _next_batch(self, checker: PayloadChecker) -> list[_Pending] | None:
        """Up to 1000 queued messages (waiting up to 10 ms for more), validated; None if idle."""
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return None
        batch = [first]
        deadline = time.monotonic() + 0.01
        while len(batch) < 1000:
            try:
                batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        out: list[_Pending] = []
        for gen, mid, qos, topic, payload in batch:
            self.stats.messages_received += 1
            if not self._from_known_node(topic):
                out.append((gen, mid, qos, None))
                continue
            try:
                row = check_payload(topic, payload, self.settings.max_payload_bytes, checker)
            except PayloadRejected as exc:
                self.stats.messages_dropped += 1
                log.warning("dropped message on %r: %s", topic[:200], str(exc)[:300])
                row = None
            out.append((gen, mid, qos, row))
        return out

    def _from_known_node(self, topic: str) -> bool:
        """Whether ``topic`` is a configured node's (always, without a node list)."""
        if self._known_nodes is None:
            return True
        parts = topic.split("/", 3)
        node = parts[2] if len(parts) > 2 else ""
        if node in self._known_nodes:
            return True
        self.stats.unknown_node_messages += 1
        self.stats.messages_dropped += 1
        if node not in self._unknown_logged and len(self._unknown_logged) < 1000:
            self._unknown_logged.add(node)
            log.warning(
                "ignoring telemetry of unknown node %r (not in the bridge's nodes: %s); "
                "further messages of it are only counted",
                node[:100],
                ", ".join(sorted(self._known_nodes)),
            )
        return False

    def _spool_loop(self) -> None:
        checker = PayloadChecker()
        pending: list[_Pending] = []
        while True:
            if not pending:
                pending = self._next_batch(checker) or []
                if not pending:
                    if self._stop_intake.is_set():
                        return
                    continue
            # take the longest prefix that fits the spool (dropped messages take no room)
            free = self.spool.free()
            take = 0
            rows: list[tuple[int, str]] = []
            for _g, _m, _q, row in pending:
                if row is not None:
                    if len(rows) >= free:
                        break
                    rows.append(row)
                take += 1
            if take == 0:  # spool full: stop acknowledging, the broker keeps the rest
                if self._stop_intake.is_set():
                    return  # not acknowledged: redelivered in the next session
                time.sleep(0.05)
                continue
            self.spool.append(rows)
            self.stats.messages_spooled += len(rows)
            self.stats.points_spooled += sum(n for n, _ in rows)
            self._spooled.set()
            gen = self._generation
            for g, mid, qos, _row in pending[:take]:
                if g == gen and qos > 0:
                    self._mqtt.ack(mid, qos)
                elif qos > 0:
                    # Received on an earlier connection: the broker redelivers it on this one,
                    # acknowledging the old id could acknowledge a different message.
                    self.stats.stale_acks_skipped += 1
            pending = pending[take:]

    # -- writer thread -----------------------------------------------------------------------

    def _writer_loop(self) -> None:
        from influxdb_client import InfluxDBClient, WritePrecision
        from influxdb_client.client.write_api import SYNCHRONOUS
        from influxdb_client.rest import ApiException

        s = self.settings.influx
        client = InfluxDBClient(
            url=s.url, token=s.token_value(), org=s.org, timeout=int(s.timeout_s * 1000)
        )
        api = client.write_api(write_options=SYNCHRONOUS)
        delay = s.retry_min_s

        def write(body: str) -> None:
            api.write(bucket=s.bucket, org=s.org, record=body, write_precision=WritePrecision.NS)

        try:
            while True:
                last_id, npoints, chunks = self.spool.peek(s.batch_points)
                if not chunks:
                    if self._stop_writer.is_set():
                        return
                    self._spooled.clear()
                    self._spooled.wait(s.flush_interval_s)
                    continue
                try:
                    write("\n".join(chunks))
                except ApiException as exc:
                    if exc.status not in (400, 422):
                        delay = self._write_failed(exc, npoints, delay)
                        continue
                    try:  # the database refuses some point for good: find and drop only that
                        self._write_one_by_one(write, chunks)
                    except Exception as exc2:  # retry the whole batch later
                        delay = self._write_failed(exc2, npoints, delay)
                        continue
                except Exception as exc:  # network errors of every kind: retry
                    delay = self._write_failed(exc, npoints, delay)
                    continue
                delay = s.retry_min_s
                self.spool.remove_through(last_id)
                self.stats.points_written += npoints
                self.stats.write_batches += 1
        finally:
            client.close()

    def _write_failed(self, exc: BaseException, npoints: int, delay: float) -> float:
        s = self.settings.influx
        self.stats.write_failures += 1
        log.warning(
            "write of %d points to %s failed (%s); %d messages kept in spool, retry in %.2f s",
            npoints,
            s.url,
            str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
            len(self.spool),
            delay,
        )
        if self._give_up.wait(delay):
            raise _GiveUp
        return min(delay * 2, s.retry_max_s)

    def _write_one_by_one(self, write: Any, chunks: list[str]) -> None:
        """Find the messages the database refuses (HTTP 400/422), drop and count only those."""
        from influxdb_client.rest import ApiException

        for chunk in chunks:
            try:
                write(chunk)
            except ApiException as exc:
                if exc.status not in (400, 422):
                    raise
                n = chunk.count("\n") + 1
                self.stats.points_rejected_by_db += n
                log.error("database refused %d points, dropped: %s", n, str(exc.body)[:300])

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect (paho reconnects by itself) and start the spool and writer threads."""
        for name, fn in (
            ("qnet-bridge-spool", self._spool_loop),
            ("qnet-bridge-writer", self._run_writer),
        ):
            t = threading.Thread(target=fn, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        b = self.settings.broker
        self._mqtt.connect_async(b.host, b.port, keepalive=b.keepalive_s)
        self._mqtt.loop_start()

    def healthy(self) -> bool:
        """True while the spool and writer threads run (the CLI exits 1 if one died)."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def _run_writer(self) -> None:
        try:
            self._writer_loop()
        except _GiveUp:
            log.warning(
                "stopped with %d messages left in spool %s", len(self.spool), self.spool.path
            )

    def stop(self, drain_s: float = 10.0) -> None:
        """Stop intake, write what the spool holds for up to ``drain_s``, then close.

        Whatever is not written stays in the spool (or, unacknowledged, in the broker) for the
        next start.
        """
        self._stop_intake.set()
        self._mqtt.disconnect()
        self._mqtt.loop_stop()
        self._threads[0].join()
        self._stop_writer.set()
        self._spooled.set()
        deadline = time.monotonic() + drain_s
        while self._threads[1].is_alive() and time.monotonic() < deadline:
            self._threads[1].join(0.1)
        self._give_up.set()
        self._threads[1].join(30)
        self.spool.close()
        log.info("bridge stopped: %s", asdict(self.stats))


class _GiveUp(Exception):
    """Internal: the writer stops retrying because the bridge is shutting down."""
