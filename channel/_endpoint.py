"""The thin I/O layer: a ZeroMQ CURVE socket, a ZAP handler and timers around a ChannelSession.

One :class:`ChannelEndpoint` per link end, one background thread owning the
sockets. The *server* end binds a ROUTER socket as CURVE server; its ZAP
handler (ZeroMQ RFC 27) admits only the pinned peer's public key, so an
unknown peer is refused during the CURVE handshake, before any message of it
reaches the session (each refusal counted as ``unknown_peer``). The *client*
end connects a DEALER socket with the server's pinned public key, so it only
completes a handshake with the holder of that key (failures counted as
``handshake_failed``). Heartbeats (ZMTP 3.1 PING/PONG) detect a dead
connection, libzmq reconnects, and on every new connection both ends
exchange HELLO and resume (see :class:`~channel.ChannelSession`).

Every frame travels in a CurveZMQ MESSAGE box (Curve25519, XSalsa20-Poly1305,
per-connection keys, strictly increasing nonces): a byte changed on the way
fails its MAC and libzmq drops the connection, which then resumes; the
session's numbering refuses anything delivered twice or out of order.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import zmq
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from ._errors import ChannelError
from ._keys import KeyPair, load_key_pair, load_public_key
from ._messages import MAX_FRAME_BYTES, Message, MessageType, link_id_of
from ._session import MAX_UNACKED, ChannelSession, Delivered, PeerHello

log = logging.getLogger("qnet.channel")

_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_MONITOR_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_DISCONNECTED
)


class ChannelEndpoint:
    """One end of an authenticated channel; thread-safe ``send`` / ``receive``.

    Args:
        role: ``"server"`` binds ``address``, ``"client"`` connects to it.
        address: a ZeroMQ TCP endpoint, e.g. ``tcp://127.0.0.1:5560``
            (a server may bind port 0; :attr:`address` then gives the real one).
        keys: this node's key pair (:func:`~channel.load_key_pair`).
        peer_public_key: the pinned Z85 public key of the other node.
        link: the link's name; both ends must use the same (its id is in every frame).
        resend_interval_s: with messages unacknowledged and no progress for this
            long, the oldest is sent again (a backstop; reconnects resume by HELLO).
        heartbeat_s: ZMTP heartbeat interval (PING every this long).
        heartbeat_timeout_s: a connection whose PONG does not come back within this
            is dropped and re-made. A PING queues behind the frames already sent, so
            this must exceed the time the largest frame takes on the link (a 2 MB
            epoch at 10 Mbit/s: 1.7 s).
        max_delivered: delivered messages held for :meth:`receive`; when that many
            wait, the socket is not read (the peer sees backpressure) until some are taken.
        tap: called with ``("tx" | "rx", frame)`` for every frame sent or received
            (the plaintext inside CURVE), e.g. for a test that decodes all traffic.
        max_frame_bytes: largest frame sent or accepted (libzmq drops a peer that
            sends a larger one before it is read into memory).
        max_unacked: largest number of unacknowledged messages kept.
        last_epochs: the record of delivered epochs saved from :meth:`last_epochs`
            before a restart, so no epoch is delivered twice across it.
    """

    def __init__(
        self,
        *,
        role: Literal["server", "client"],
        address: str,
        keys: KeyPair,
        peer_public_key: bytes,
        link: str,
        resend_interval_s: float = 5.0,
        heartbeat_s: float = 1.0,
        heartbeat_timeout_s: float = 10.0,
        max_delivered: int = 10_000,
        tap: Callable[[str, bytes], None] | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        max_unacked: int = MAX_UNACKED,
        last_epochs: Mapping[MessageType, int] | None = None,
    ) -> None:
        if role not in ("server", "client"):
            raise ChannelError(f"role must be 'server' or 'client', got {role!r}")
        if len(peer_public_key) != 40:
            raise ChannelError("peer_public_key must be a 40-character Z85 CURVE key")
        self.role = role
        self._address = address
        self._keys = keys
        self._peer_key = peer_public_key
        self.link = link
        self._resend_interval_s = resend_interval_s
        self._heartbeat_ms = max(1, int(heartbeat_s * 1000))
        self._heartbeat_timeout_ms = max(self._heartbeat_ms, int(heartbeat_timeout_s * 1000))
        self._max_delivered = max_delivered
        self._tap = tap
        self._max_frame_bytes = max_frame_bytes
        self._session = ChannelSession(
            link_id_of(link), max_frame_bytes, max_unacked, last_epochs=last_epochs
        )
        self._lock = threading.Lock()
        self._tx: deque[bytes] = deque()
        self._rx: queue.Queue[Message] = queue.Queue()
        self._transport: Counter[str] = Counter()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._bound: str | None = None

    @classmethod
    def from_key_files(
        cls,
        *,
        role: Literal["server", "client"],
        address: str,
        secret_key_file: Path,
        peer_public_key_file: Path,
        link: str,
        **options: Any,
    ) -> ChannelEndpoint:
        """An endpoint from this node's ``.key_secret`` file and the peer's pinned ``.key`` file."""
        return cls(
            role=role,
            address=address,
            keys=load_key_pair(secret_key_file),
            peer_public_key=load_public_key(peer_public_key_file),
            link=link,
            **options,
        )

    # -- public API --------------------------------------------------------------------
    def start(self) -> ChannelEndpoint:
        """Open the socket in a background thread; returns once it is bound or connecting."""
        if self._thread is not None:
            raise ChannelError("endpoint already started")
        self._thread = threading.Thread(
            target=self._run, name=f"channel-{self.role}-{self.link}", daemon=True
        )
        self._thread.start()
        self._ready.wait(10.0)
        if self._error is not None:
            raise ChannelError(f"channel {self.role} could not start: {self._error}")
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and close the sockets (unacknowledged messages are dropped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> ChannelEndpoint:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        """The endpoint bound (server, with the real port) or connected to (client)."""
        return self._bound or self._address

    @property
    def connected(self) -> bool:
        """Whether a peer connection is up and has said HELLO (client: handshake done)."""
        return self._connected.is_set()

    def send(self, message: Message) -> int:
        """Queue ``message`` for the peer; returns its message number.

        Raises :class:`~channel.ChannelFullError` when too many await acknowledgement.
        """
        with self._lock:
            frame = self._session.send(message)
            seq = self._session.last_sent
        self._tx.append(frame)
        return seq

    def receive(self, timeout_s: float | None = None) -> Message | None:
        """The next delivered message from the peer, or None after ``timeout_s``."""
        try:
            return self._rx.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def wait_acked(self, timeout_s: float) -> bool:
        """Wait until every sent message is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._session.unacked == 0:
                    return True
            time.sleep(0.01)
        return False

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until a peer connection is up; False on timeout."""
        return self._connected.wait(timeout_s)

    def last_epochs(self) -> dict[MessageType, int]:
        """The last delivered epoch per epoch-ordered type: save it, pass it back on restart."""
        with self._lock:
            return self._session.last_epochs

    def counters(self) -> dict[str, int]:
        """Session and transport counters: sent, delivered, refusals by kind, connects ..."""
        with self._lock:
            out = dict(self._session.counters)
            out.update(self._transport)
            out["unacked"] = self._session.unacked
        return out

    @property
    def error(self) -> BaseException | None:
        """The exception that stopped the I/O thread, if any."""
        return self._error

    # -- the I/O thread ----------------------------------------------------------------
    def _run(self) -> None:
        ctx = zmq.Context()
        sockets: list[zmq.Socket[bytes]] = []
        try:
            zap = None
            if self.role == "server":
                zap = ctx.socket(zmq.REP)
                sockets.append(zap)
                zap.linger = 0
                zap.bind(_ZAP_ENDPOINT)
            sock = ctx.socket(zmq.ROUTER if self.role == "server" else zmq.DEALER)
            sockets.append(sock)
            sock.linger = 0
            sock.setsockopt(zmq.MAXMSGSIZE, self._max_frame_bytes)
            sock.setsockopt(zmq.HEARTBEAT_IVL, self._heartbeat_ms)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, self._heartbeat_timeout_ms)
            sock.setsockopt(zmq.HEARTBEAT_TTL, self._heartbeat_timeout_ms)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            sock.setsockopt(zmq.HANDSHAKE_IVL, 10_000)
            sock.curve_secretkey = self._keys.secret
            sock.curve_publickey = self._keys.public
            if self.role == "server":
                sock.curve_server = True
                sock.setsockopt(zmq.ZAP_DOMAIN, b"qnet")
                sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
                sock.bind(self._address)
                self._bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                sock.curve_serverkey = self._peer_key
                sock.setsockopt(zmq.IMMEDIATE, 1)
                sock.connect(self._address)
            monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
            sockets.append(monitor)
        except Exception as e:  # bind failure, bad key: reported by start()
            self._error = e
            self._ready.set()
            for s in sockets:
                s.close(0)
            ctx.term()
            return
        self._ready.set()
        try:
            self._loop(sock, monitor, zap)
        except Exception as e:  # pragma: no cover - a bug; never let it pass silently
            self._error = e
            log.exception("channel %s %s: I/O thread stopped", self.role, self.link)
        finally:
            sock.disable_monitor()
            for s in sockets:
                s.close(0)
            ctx.term()
            self._connected.clear()

    def _loop(
        self, sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes], zap: zmq.Socket[bytes] | None
    ) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        if zap is not None:
            poller.register(zap, zmq.POLLIN)
        pending: deque[bytes] = deque()
        peer: bytes | None = None
        last_progress = time.monotonic()
        last_oldest = 0
        while not self._stop.is_set():
            ready = dict(poller.poll(10))
            if zap is not None and zap in ready:
                self._zap(zap)
            if monitor in ready:
                while True:
                    try:
                        ev = recv_monitor_message(monitor, zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if self._on_monitor(int(ev["event"])):
                        # a new connection (client side): resume with HELLO
                        with self._lock:
                            pending.clear()
                            pending.extend(self._session.connected())
            if sock in ready and self._rx.qsize() >= self._max_delivered:
                time.sleep(0.005)  # the application is behind: leave it in the socket
            elif sock in ready:
                while self._rx.qsize() < self._max_delivered:
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK, copy=True)
                    except zmq.Again:
                        break
                    if self.role == "server":
                        ident, parts = parts[0], parts[1:]
                    if len(parts) != 1:
                        self._count("malformed")
                        log.warning("channel %s: refused a %d-part message", self.link, len(parts))
                        continue
                    self._count("bytes_received", len(parts[0]))
                    if self._tap is not None:
                        self._tap("rx", parts[0])
                    with self._lock:
                        events = self._session.receive(parts[0])
                    for ev2 in events:
                        if isinstance(ev2, Delivered):
                            self._rx.put(ev2.message)
                        elif isinstance(ev2, PeerHello):
                            if self.role == "server":
                                peer = ident
                                self._connected.set()
                                with self._lock:
                                    pending.clear()
                                    pending.extend(self._session.outgoing())
                                    pending.extend(self._session.hello())
                        else:
                            err = getattr(ev2, "error", None)
                            if err is not None:
                                log.warning("channel %s: refused: %s", self.link, err)
                    if self.role == "server" and peer is None:
                        peer = ident
            # what the session and the application want sent
            with self._lock:
                pending.extend(self._session.outgoing())
                oldest = self._session.oldest_unacked
                if oldest != last_oldest:  # an acknowledgement moved the window (or all done)
                    last_progress = time.monotonic()
                last_oldest = oldest
                if oldest and time.monotonic() - last_progress > self._resend_interval_s:
                    pending.extend(self._session.resend_oldest())
                    last_progress = time.monotonic()
            while self._tx:
                pending.append(self._tx.popleft())
            while pending:
                frame = pending[0]
                try:
                    if self.role == "server":
                        if peer is None:
                            pending.clear()  # kept in the session; resent on HELLO
                            break
                        sock.send_multipart([peer, frame], zmq.NOBLOCK)
                    else:
                        if not self._connected.is_set():
                            pending.clear()  # kept in the session; resent after HELLO
                            break
                        sock.send(frame, zmq.NOBLOCK)
                except zmq.Again:
                    if not self._connected.is_set():
                        pending.clear()  # no connection: HELLO will resume
                    break
                except zmq.ZMQError as e:
                    if e.errno == zmq.EHOSTUNREACH:  # that peer connection is gone
                        pending.clear()
                        self._connected.clear()
                        break
                    raise
                pending.popleft()
                self._count("bytes_sent", len(frame))
                if self._tap is not None:
                    self._tap("tx", frame)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._transport[name] += n

    def _on_monitor(self, event: int) -> bool:
        """Count a socket event; True when a client connection just came up."""
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._count("connects", 1)
            if self.role == "client":
                self._connected.set()
                return True
        elif event == zmq.EVENT_DISCONNECTED:
            self._count("disconnects", 1)
            if self.role == "client":
                self._connected.clear()
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self._count("auth_failed", 1)
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            # a CURVE box that does not open (changed on the way, or a foreign key): libzmq
            # drops the connection; the session resumes on the next one
            self._count("curve_refused", 1)
            log.warning(
                "channel %s %s: refused a CURVE box (tampered or foreign)", self.role, self.link
            )
        elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            self._count("handshake_failed", 1)
        return False

    def _zap(self, zap: zmq.Socket[bytes]) -> None:
        """Answer one ZAP request: admit only the pinned peer key (ZeroMQ RFC 27)."""
        try:
            req = zap.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        version, request_id = req[0], req[1] if len(req) > 1 else b""
        mechanism = req[5] if len(req) > 5 else b""
        key = req[6] if len(req) > 6 else b""
        address = req[3].decode(errors="replace") if len(req) > 3 else "?"
        ok = mechanism == b"CURVE" and len(key) == 32 and z85.encode(key) == self._peer_key
        if ok:
            zap.send_multipart([version, request_id, b"200", b"OK", b"peer", b""])
        else:
            self._count("unknown_peer", 1)
            shown = z85.encode(key).decode() if len(key) == 32 else "none"
            log.warning(
                "channel %s: refused unknown peer from %s (public key %s)",
                self.link,
                address,
                shown,
            )
            zap.send_multipart([version, request_id, b"400", b"unknown peer", b"", b""])
