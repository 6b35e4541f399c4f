"""Serve an emulator over ZeroMQ REP, the transport ID Quantique's Time Controllers use for SCPI.

Needs ``pyzmq`` (imported on construction). Every request gets one reply
message: the emulator's reply, or an empty message for a set command. Fault
mode ``timeout`` stops answering until :meth:`ZmqInstrumentServer.restore`.
"""

from __future__ import annotations

import threading
from typing import Any


class ZmqInstrumentServer:
    """One emulator on ``tcp://host:port`` (port 0 picks a free one; read ``.port``)."""

    def __init__(self, emulator: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import zmq

        self.emulator = emulator
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        if port:
            self._sock.bind(f"tcp://{host}:{port}")
            self.port = int(port)
        else:
            self.port = self._sock.bind_to_random_port(f"tcp://{host}")
        self.mode = "none"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"zmq-sim-{self.port}")

    def start(self) -> ZmqInstrumentServer:
        """Start answering in a background thread; returns self."""
        self._thread.start()
        return self

    def inject(self, mode: str) -> None:
        """``"timeout"`` stops answering; ``"none"`` answers again."""
        if mode not in ("none", "timeout"):
            raise ValueError(f"ZeroMQ server fault mode must be none or timeout, got {mode!r}")
        self.mode = mode

    def restore(self) -> None:
        """Answer again."""
        self.mode = "none"

    def stop(self) -> None:
        """Stop the thread and close the socket."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self._sock.close(linger=0)
        self._ctx.term()

    def _loop(self) -> None:
        import zmq

        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop.is_set():
            if self.mode == "timeout" or not poller.poll(50) or self.mode == "timeout":
                self._stop.wait(0.01)
                continue
            line = self._sock.recv().decode("ascii", errors="replace")
            with self.emulator.lock:
                try:
                    reply = self.emulator.handle(line)
                except Exception:  # an emulator bug must not kill the server
                    reply = None
            self._sock.send((reply or "").encode("ascii"))
