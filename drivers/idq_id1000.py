"""ID Quantique ID1000 (and ID900) Time Controller: SCPI control plus a time-tag stream.

Command set: ID Quantique "ID1000 Time Controller, User Manual" (and the
ID900 manual), chapter "Remote control" / "SCPI command reference": input
blocks ``INPUt<n>:THREshold``, ``INPUt<n>:COUNter?``, histogram blocks
``HISTogram<n>:BWIDth`` (ps), ``:BCOUnt``, ``:FLUSh``, ``:DATA?`` (a
bracketed list of counts) and timestamp streaming ``RAW<n>:SEND ON|OFF``.

Transport: the manual documents SCPI over ZeroMQ REQ/REP on TCP port 5555;
use :class:`drivers.ZmqTransport` (``zmq://host:5555``) for the real box. The
emulated testbed serves the same command lines over a raw TCP socket
(``TCPIP::host::port::SOCKET``); the driver is transport-agnostic.

Timestamp stream: on the real box the timestamps (64-bit picoseconds per
channel) leave through ID Quantique's DataLink service; we could not confirm
its wire framing from public material, so the stream this driver reads is
our documented framing (:mod:`drivers._tagframes`), which the emulator
produces and a small bridge next to DataLink can produce from the 64-bit
records. Input ``n`` (1-based on the box) is channel ``n - 1`` in a TagBatch.
"""

from __future__ import annotations

import re
import socket
import time
from typing import Any, ClassVar

import numpy as np

from coincidence import TagBatch

from ._errors import ConnectionLost, InstrumentTimeout, LimitError, UnexpectedReply
from ._instrument import Instrument
from ._tagframes import HEADER, decode_body, decode_header
from ._tagsource import TagSource


class IDQuantiqueID1000(Instrument):
    """Time controller: input thresholds, counters, histogram blocks, tag stream."""

    MODEL = "ID Quantique ID1000"
    IDENTITY_PATTERN = r"(?i)ID\s*Quantique.*ID\s*(900|1000)"
    N_INPUTS = 4
    N_HISTOGRAMS = 4
    #: The time controller's ranges. Input thresholds and histogram settings cannot harm the
    #: unit or the detectors: unconfigured, the hardware range applies.
    HARDWARE_LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "threshold_v": (-2.0, 2.0),
        "histogram_bin_width_ps": (1.0, 1e6),
        "histogram_bin_count": (1.0, 16384.0),
    }
    DEFAULT_LIMITS: ClassVar[dict[str, tuple[float, float]]] = HARDWARE_LIMITS
    OPTIONS: ClassVar[dict[str, Any]] = {"stream_host": None, "stream_port": None}

    def _index(self, kind: str, n: int, top: int, command: str) -> int:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= top:
            raise LimitError(self.name, command, f"{kind} must be an int in 1..{top}, got {n!r}")
        return n

    # -- inputs --------------------------------------------------------------------------
    def format_threshold(self, input_: int, volts: float) -> str:
        """The exact threshold command (limit-checked)."""
        cmd = "INPU<n>:THRE <V>"
        n = self._index("input", input_, self.N_INPUTS, cmd)
        v = self.check_limit("threshold_v", volts, cmd)
        return f"INPU{n}:THRE {v:.3f}V"

    def set_threshold(self, input_: int, volts: float) -> None:
        """Discriminator threshold of one input, V."""
        self.write(self.format_threshold(input_, volts))

    def threshold(self, input_: int) -> float:
        """Discriminator threshold of one input, V (accepts ``0.500V`` or ``0.5``)."""
        cmd = f"INPU{self._index('input', input_, self.N_INPUTS, 'INPU?')}:THRE?"
        return self._float(cmd, self.query(cmd).strip().rstrip("Vv"))

    def counter(self, input_: int) -> int:
        """Count of one input over the last integration period."""
        cmd = f"INPU{self._index('input', input_, self.N_INPUTS, 'INPU?')}:COUN?"
        reply = self.query(cmd).strip()
        if not reply.isdigit():
            raise UnexpectedReply(self.name, cmd, f"not a count: {reply!r}")
        return int(reply)

    def counters(self) -> list[int]:
        """Counts of every input, input 1 first."""
        with self.lock:
            return [self.counter(n) for n in range(1, self.N_INPUTS + 1)]

    # -- histograms -------------------------------------------------------------------------
    def format_histogram(self, hist: int, bin_width_ps: int, bin_count: int) -> list[str]:
        """The exact commands configuring one histogram block (limit-checked)."""
        cmd = "HIST<n>:BWID/BCOU"
        h = self._index("histogram", hist, self.N_HISTOGRAMS, cmd)
        pairs = (("histogram_bin_width_ps", bin_width_ps), ("histogram_bin_count", bin_count))
        for key, value in pairs:
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise LimitError(self.name, cmd, f"{key} must be an integer, got {value!r}")
            self.check_limit(key, int(value), cmd)
        return [f"HIST{h}:BWID {int(bin_width_ps)}", f"HIST{h}:BCOU {int(bin_count)}"]

    def configure_histogram(self, hist: int, bin_width_ps: int, bin_count: int) -> None:
        """Set bin width (ps) and bin count of one histogram block, then flush it."""
        cmds = self.format_histogram(hist, bin_width_ps, bin_count)
        with self.lock:
            for c in cmds:
                self.write(c)
            self.write(f"HIST{hist}:FLUS")

    def flush_histogram(self, hist: int) -> None:
        """Clear one histogram block."""
        self.write(f"HIST{self._index('histogram', hist, self.N_HISTOGRAMS, 'HIST:FLUS')}:FLUS")

    def histogram(self, hist: int) -> np.ndarray:
        """Counts of one histogram block (int64 array)."""
        cmd = f"HIST{self._index('histogram', hist, self.N_HISTOGRAMS, 'HIST:DATA?')}:DATA?"
        reply = self.query(cmd).strip()
        if not re.fullmatch(r"\[\s*(\d+\s*(,\s*\d+\s*)*)?\]", reply):
            raise UnexpectedReply(self.name, cmd, f"not a list of counts: {reply[:80]!r}")
        body = reply[1:-1].strip()
        return np.array([int(x) for x in body.split(",")] if body else [], dtype=np.int64)

    # -- stream -------------------------------------------------------------------------------
    def set_streaming(self, on: bool, inputs: tuple[int, ...] = (1, 2, 3, 4)) -> None:
        """Start or stop the timestamp stream of the given inputs."""
        checked = [self._index("input", n, self.N_INPUTS, "RAW<n>:SEND") for n in inputs]
        with self.lock:
            for n in checked:
                self.write(f"RAW{n}:SEND {'ON' if on else 'OFF'}")

    def tag_source(self, timeout_s: float | None = None) -> IDQTagStream:
        """A TagSource reading this box's tag stream (``stream_host``/``stream_port`` options)."""
        port = self.options.get("stream_port")
        if port is None:
            raise ValueError(f"{self.name}: option stream_port is not configured")
        host = self.options.get("stream_host") or _host_of(self.transport)
        return IDQTagStream(
            self.name, host, int(port), self.N_INPUTS, timeout_s or self.transport.timeout_s
        )

    def _float(self, cmd: str, text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise UnexpectedReply(self.name, cmd, f"not a number: {text!r}") from None

    def readings(self) -> dict[str, Any]:
        """Counts of every input."""
        return {"counts": self.counters()}


def _host_of(transport: Any) -> str:
    for attr in ("resource", "url"):
        text = str(getattr(transport, attr, ""))
        m = re.match(r"(?i)TCPIP\d*::([^:]+)::", text) or re.match(r"\w+://([^:/]+)", text)
        if m:
            return m.group(1)
    return "127.0.0.1"


class IDQTagStream(TagSource):
    """TagSource over a TCP tag stream in :mod:`drivers._tagframes` framing.

    ``read`` returns the next frame's batch; if none arrives within the
    timeout it returns an empty zero-length batch at the last end time (the
    box reports measured time only with frames). An end frame ends the stream
    (``read`` returns None from then on); a connection that closes without one
    raises ConnectionLost, and a gap between frames raises UnexpectedReply.
    """

    def __init__(
        self, name: str, host: str, port: int, n_channels: int, connect_timeout_s: float = 1.0
    ) -> None:
        self.name = name
        self._n = n_channels
        self._buf = bytearray()
        self._end: int | None = None
        self._done = False
        try:
            self._sock: socket.socket | None = socket.create_connection(
                (host, port), timeout=connect_timeout_s
            )
        except OSError as exc:
            raise ConnectionLost(name, "<stream>", f"cannot open {host}:{port}: {exc}") from exc

    @property
    def n_channels(self) -> int:
        """Number of inputs."""
        return self._n

    def _fill(self, n: int, deadline: float, *, inside_frame: bool) -> bool:
        """Grow the buffer to ``n`` bytes before ``deadline``; False on timeout."""
        while len(self._buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._sock is None:
                return False
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(max(65536, n - len(self._buf)))
            except TimeoutError:
                return False
            except OSError as exc:
                raise ConnectionLost(self.name, "<stream>", f"stream broke: {exc}") from exc
            if not chunk:
                where = "inside a frame" if inside_frame or self._buf else "without an end frame"
                raise ConnectionLost(self.name, "<stream>", f"stream cut {where}")
            self._buf += chunk
        return True

    def read(self, timeout_s: float = 1.0) -> TagBatch | None:
        """Next batch within ``timeout_s``; None once the stream has ended."""
        if self._done:
            return None
        deadline = time.monotonic() + timeout_s
        if not self._fill(HEADER.size, deadline, inside_frame=False):
            end = self._end or 0
            return TagBatch.empty(end, end)
        try:
            n, begin, end = decode_header(bytes(self._buf[: HEADER.size]))
        except ValueError as exc:
            raise UnexpectedReply(self.name, "<stream>", str(exc)) from None
        if n < 0:
            del self._buf[: HEADER.size]
            self._done = True
            self.close()
            return None
        total = HEADER.size + 9 * n
        # A started frame is finished even past the timeout, bounded by one more timeout.
        if not self._fill(total, max(deadline, time.monotonic() + timeout_s), inside_frame=True):
            raise InstrumentTimeout(self.name, "<stream>", f"frame of {n} tags incomplete")
        body = bytes(self._buf[HEADER.size : total])
        del self._buf[:total]
        if self._end is not None and begin != self._end:
            raise UnexpectedReply(
                self.name,
                "<stream>",
                f"gap in stream: frame begins {begin} ps, last ended {self._end} ps",
            )
        try:
            batch = decode_body(n, begin, end, body)
        except ValueError as exc:
            raise UnexpectedReply(self.name, "<stream>", f"bad frame: {exc}") from None
        batch.check_channels(self._n, f"{self.name} stream")
        self._end = end
        return batch

    def close(self) -> None:
        """Close the stream socket; idempotent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
