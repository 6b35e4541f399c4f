"""ZeroMQ REQ/REP transport: how ID Quantique's Time Controllers take SCPI (TCP port 5555).

Each command is one ZeroMQ message and every command, set or query, gets one
reply message (empty for a set). Needs ``pyzmq`` (imported when opened). A
timed-out REQ socket cannot send again, so a timeout closes it; the owning
Instrument reopens the session on its next call.
"""

from __future__ import annotations

from typing import Any

from ._errors import ConnectionLost, InstrumentReportedError, InstrumentTimeout
from ._transport import Transport, log_traffic


class ZmqTransport(Transport):
    """SCPI over a ZeroMQ REQ socket; ``url`` like ``zmq://169.254.99.100:5555``.

    Only ``timeout_s`` is configurable: ZeroMQ frames the messages, so there are no
    terminations to set (an unexpected keyword is a TypeError, not silently dropped).
    """

    def __init__(self, name: str, url: str, *, timeout_s: float = 1.0) -> None:
        super().__init__(name, timeout_s=timeout_s, write_termination="", read_termination="\n")
        self.url = url
        self._ctx: Any = None
        self._sock: Any = None

    def open(self) -> None:
        """Connect the REQ socket (ZeroMQ connects lazily; failures show as timeouts)."""
        try:
            import zmq
        except ImportError as exc:
            raise ConnectionLost(self.name, None, "pyzmq is not installed") from exc
        self.close()
        self._ctx = zmq.Context.instance()
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(self.timeout_s * 1000))
        sock.setsockopt(zmq.SNDTIMEO, int(self.timeout_s * 1000))
        sock.connect("tcp://" + self.url.removeprefix("zmq://"))
        self._sock = sock

    def close(self) -> None:
        """Close the socket; idempotent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close(linger=0)

    @property
    def is_open(self) -> bool:
        """Whether the socket is open."""
        return self._sock is not None

    def _exchange(self, command: str) -> str:
        import zmq

        if self._sock is None:
            raise ConnectionLost(self.name, command, "socket is closed")
        data = command.encode(self.encoding)
        log_traffic(self.name, ">>", data)
        try:
            self._sock.send(data)
            reply = self._sock.recv()
        except zmq.Again as exc:
            self.close()
            raise InstrumentTimeout(
                self.name, command, f"no reply within {self.timeout_s} s"
            ) from exc
        except zmq.ZMQError as exc:
            self.close()
            raise ConnectionLost(self.name, command, f"ZeroMQ error: {exc}") from exc
        log_traffic(self.name, "<<", reply)
        return reply.decode(self.encoding, errors="replace").strip()

    def write(self, command: str) -> None:
        """Send a set command; a non-empty reply is the instrument's error text."""
        reply = self._exchange(command)
        if reply:
            raise InstrumentReportedError(self.name, command, reply)

    def query(self, command: str) -> str:
        """Send a query and return its reply."""
        return self._exchange(command)

    def read(self, command: str = "<read>") -> str:
        """REQ/REP has no unsolicited replies."""
        raise ConnectionLost(self.name, command, "ZeroMQ REQ/REP cannot read without a request")

    def write_bytes(self, data: bytes, command: str) -> None:
        """Not used: messages are framed by ZeroMQ."""
        self.write(data.decode(self.encoding))

    def read_until(self, terminator: bytes, command: str) -> bytes:
        """Not used: messages are framed by ZeroMQ."""
        raise ConnectionLost(self.name, command, "ZeroMQ REQ/REP cannot read without a request")

    def read_bytes(self, n: int, timeout_s: float, command: str = "<stream>") -> bytes:
        """Not used: the tag stream has its own socket."""
        return b""
