"""Serve one instrument emulator over TCP, with run-time fault injection.

:class:`InstrumentServer` listens on ``host:port`` in a background thread and
speaks the emulator's line protocol (each command ends in
``emulator.terminator``, each reply in ``emulator.reply_terminator``). SCPI
drivers reach it as ``TCPIP::host::port::SOCKET``, serial drivers through
pyserial's ``socket://host:port``. An emulator with ``next_stream_frame()``
(the time tagger) also gets a stream port that pushes frames every
``frame_period_s``.

Faults (``inject(mode)``, ``restore()``, or ``FaultConfig`` at start):
``timeout`` (read commands, never answer), ``garbage`` (answer junk bytes plus
the terminator), ``late`` (answer after ``late_s``), ``disconnect`` (drop every
connection and refuse new ones until ``restore()``, i.e. a power cycle).
Threads are bounded (``max_clients``) and every socket is closed on ``stop()``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("qnet.sim.server")

FAULT_MODES = ("none", "timeout", "garbage", "late", "disconnect")


#: Ports handed out by :func:`free_port`: below Linux's ephemeral range (32768-60999),
#: where the kernel never puts the source port of an outgoing connection or a bind to
#: port 0. A port chosen there could be taken by any connection before the server
#: binds it (seen in CI: "Address already in use" under load).
_PORT_RANGE = (20000, 32000)
_rng = random.Random()
#: Ports handed out lately: a config names several ports before any server binds one, so
#: "free right now" alone could hand the same port out twice (seen in CI under load).
_handed_out: deque[int] = deque(maxlen=4000)
_handed_lock = threading.Lock()


def free_port() -> int:
    """A TCP port free on the loopback interface now and not handed out lately here."""
    with _handed_lock:
        for _ in range(200):
            port = _rng.randrange(*_PORT_RANGE)
            if port in _handed_out:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.append(port)
            return port
    with socket.socket() as s:  # the whole range busy: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FaultConfig:
    """Fault-injection settings: ``mode`` one of FAULT_MODES; ``late_s`` for ``late``."""

    mode: str = "none"
    late_s: float = 0.5
    garbage: bytes = b"\x8f\xfe#@!garbage"

    def __post_init__(self) -> None:
        if self.mode not in FAULT_MODES:
            raise ValueError(f"fault mode {self.mode!r} is not one of {FAULT_MODES}")
        if self.late_s < 0:
            raise ValueError(f"late_s must be >= 0, got {self.late_s}")


class InstrumentServer:
    """One emulator on one TCP port (and a stream port for tag-streaming emulators).

    Args:
        emulator: an object with ``terminator``, ``reply_terminator``, ``lock`` and
            ``handle(line) -> str | None`` (see ``drivers/sim/README.md``).
        host: interface to listen on (default loopback only).
        port: TCP port; 0 picks a free one (read it back from ``.port``).
        faults: initial fault settings.
        stream_port: port of the tag stream (0 = free one); used only if the
            emulator has ``next_stream_frame``.
        frame_period_s: wall-clock pause between stream frames.
        max_clients: connections served at once; more are closed at once.
    """

    def __init__(
        self,
        emulator: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultConfig | None = None,
        stream_port: int = 0,
        frame_period_s: float = 0.01,
        max_clients: int = 8,
    ) -> None:
        self.emulator = emulator
        self.host = host
        self._port = int(port)
        self._stream_port = int(stream_port)
        self.faults = faults or FaultConfig()
        self.frame_period_s = frame_period_s
        self.max_clients = max_clients
        self.received: deque[tuple[int, str]] = deque(maxlen=10000)
        self._listener: socket.socket | None = None
        self._stream_listener: socket.socket | None = None
        self._conns: dict[int, socket.socket] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._down = threading.Event()
        self._next_id = 0
        self._streams = hasattr(emulator, "next_stream_frame")

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The command port."""
        return self._port

    @property
    def stream_port(self) -> int | None:
        """The tag-stream port (None for emulators without a stream)."""
        return self._stream_port if self._streams else None

    def start(self) -> InstrumentServer:
        """Bind and start serving; returns self."""
        self._stop.clear()
        self._bind()
        if self.faults.mode == "disconnect":
            self._go_down()
        return self

    def stop(self) -> None:
        """Close every socket and join the threads."""
        self._stop.set()
        self._go_down()
        for t in list(self._threads):
            t.join(timeout=2.0)
        self._threads.clear()

    def __enter__(self) -> InstrumentServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listen(self, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, port))
        s.listen(8)
        s.settimeout(0.05)
        return s

    def _bind(self) -> None:
        self._down.clear()
        self._listener = self._listen(self._port)
        self._port = self._listener.getsockname()[1]
        self._spawn(self._accept_loop, self._listener, self._serve)
        if self._streams:
            self._stream_listener = self._listen(self._stream_port)
            self._stream_port = self._stream_listener.getsockname()[1]
            self._spawn(self._accept_loop, self._stream_listener, self._stream)

    def _spawn(self, target: Any, *args: Any) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        t = threading.Thread(target=target, args=args, daemon=True, name=f"sim-{self.port}")
        self._threads.append(t)
        t.start()

    def _go_down(self) -> None:
        self._down.set()
        for sock in (self._listener, self._stream_listener):
            if sock is not None:
                # close() alone leaves the port listening while the accept thread still
                # polls it, so restore() right after would find it in use; shutdown ends
                # the listening state now.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self._listener = self._stream_listener = None
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    # -- faults ---------------------------------------------------------------------------
    def inject(self, mode: str, late_s: float | None = None) -> None:
        """Switch to fault ``mode`` now (``disconnect`` drops everything until restore)."""
        self.faults = FaultConfig(mode, self.faults.late_s if late_s is None else late_s)
        if mode == "disconnect":
            self._go_down()

    def restore(self) -> None:
        """Back to normal; after a disconnect the instrument comes back on the same ports."""
        was_down = self._down.is_set()
        self.faults = FaultConfig("none", self.faults.late_s)
        if was_down and not self._stop.is_set():
            self._bind()

    # -- serving ------------------------------------------------------------------------------
    def _accept_loop(self, listener: socket.socket, handler: Any) -> None:
        while not self._stop.is_set() and not self._down.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                if len(self._conns) >= self.max_clients:
                    conn.close()
                    continue
                self._next_id += 1
                cid = self._next_id
                self._conns[cid] = conn
            self._spawn(handler, cid, conn)

    def _drop(self, cid: int, conn: socket.socket) -> None:
        with self._lock:
            self._conns.pop(cid, None)
        conn.close()

    def _serve(self, cid: int, conn: socket.socket) -> None:
        term = self.emulator.terminator.encode()
        rterm = self.emulator.reply_terminator.encode()
        buf = b""
        try:
            conn.settimeout(0.05)
            while not self._stop.is_set() and not self._down.is_set():
                try:
                    chunk = conn.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buf += chunk
                while term in buf:
                    raw, buf = buf.split(term, 1)
                    line = raw.decode("ascii", errors="replace")
                    self.received.append((cid, line))
                    self._answer(conn, line, rterm)
        except OSError:
            return
        finally:
            self._drop(cid, conn)

    def _answer(self, conn: socket.socket, line: str, rterm: bytes) -> None:
        mode = self.faults.mode
        if mode in ("timeout", "disconnect"):
            return
        try:
            with self.emulator.lock:
                reply = self.emulator.handle(line)
        except Exception:
            log.exception("emulator %s failed on %r", self.emulator.name, line)
            reply = None
        if reply is None:
            return
        if mode == "garbage":
            conn.sendall(self.faults.garbage + rterm)
            return
        if mode == "late":
            end = time.monotonic() + self.faults.late_s
            while time.monotonic() < end and not self._stop.is_set():
                time.sleep(0.01)
        conn.sendall(reply.encode("ascii") + rterm)

    def _stream(self, cid: int, conn: socket.socket) -> None:
        try:
            while not self._stop.is_set() and not self._down.is_set():
                if self.faults.mode == "none":
                    with self.emulator.lock:
                        frame = self.emulator.next_stream_frame()
                    if frame:
                        conn.sendall(frame)
                time.sleep(self.frame_period_s)
        except OSError:
            return
        finally:
            self._drop(cid, conn)
