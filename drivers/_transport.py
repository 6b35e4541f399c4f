"""Byte transports under the drivers: VISA (pyvisa) and serial (pyserial), one interface.

A transport moves terminated ASCII lines (and raw bytes for streams) to one
instrument and turns every low-level failure into the driver exception tree
(:mod:`drivers._errors`), naming the instrument and the command. Every exchange
is logged at debug level on the ``qnet.traffic`` logger (timestamp, instrument,
direction, bytes). Transports are not thread-safe on their own: the
:class:`~drivers._instrument.Instrument` that owns one serialises access with its lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from typing import Any

from ._errors import ConnectionLost, InstrumentTimeout, UnexpectedReply

traffic_log = logging.getLogger("qnet.traffic")


def log_traffic(instrument: str, direction: str, data: bytes) -> None:
    """Log one raw exchange (``direction`` is ``">>"`` out or ``"<<"`` in) at debug level."""
    if traffic_log.isEnabledFor(logging.DEBUG):
        stamp = datetime.now(UTC).isoformat(timespec="microseconds")
        traffic_log.debug("%s %s %s %r", stamp, instrument, direction, data)


class Transport(ABC):
    """One instrument's byte channel: terminated command lines out, terminated replies in.

    Args:
        name: the instrument's configured name (used in every error and log line).
        timeout_s: bound on every read, seconds.
        write_termination: appended to every command written.
        read_termination: marks the end of every reply (stripped before returning).
        encoding: text encoding of commands and replies.
    """

    def __init__(
        self,
        name: str,
        *,
        timeout_s: float = 1.0,
        write_termination: str = "\n",
        read_termination: str = "\n",
        encoding: str = "ascii",
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"{name}: timeout_s must be > 0, got {timeout_s}")
        if not read_termination:
            raise ValueError(f"{name}: read_termination must not be empty")
        self.name = name
        self.timeout_s = float(timeout_s)
        self.write_termination = write_termination
        self.read_termination = read_termination
        self.encoding = encoding

    # -- to implement -------------------------------------------------------------
    @abstractmethod
    def open(self) -> None:
        """Open the session (raises ConnectionLost if the instrument cannot be reached)."""

    @abstractmethod
    def close(self) -> None:
        """Close the session; idempotent, never raises."""

    @property
    @abstractmethod
    def is_open(self) -> bool:
        """Whether a session is currently open."""

    @abstractmethod
    def write_bytes(self, data: bytes, command: str) -> None:
        """Send raw bytes (``command`` names the exchange in errors)."""

    @abstractmethod
    def read_until(self, terminator: bytes, command: str) -> bytes:
        """Bytes up to and including ``terminator``, within ``timeout_s`` in total."""

    @abstractmethod
    def read_bytes(self, n: int, timeout_s: float, command: str = "<stream>") -> bytes:
        """Up to ``n`` raw bytes that arrive within ``timeout_s`` (b"" if none; for streams)."""

    # -- line protocol ---------------------------------------------------------------
    def write(self, command: str) -> None:
        """Send one command line (the write termination is appended)."""
        data = (command + self.write_termination).encode(self.encoding)
        log_traffic(self.name, ">>", data)
        self.write_bytes(data, command)

    def read(self, command: str = "<read>") -> str:
        """One reply line, termination stripped; undecodable bytes raise UnexpectedReply."""
        term = self.read_termination.encode(self.encoding)
        raw = self.read_until(term, command)
        log_traffic(self.name, "<<", raw)
        if raw.endswith(term):
            raw = raw[: -len(term)]
        try:
            return raw.decode(self.encoding)
        except UnicodeDecodeError:
            raise UnexpectedReply(self.name, command, f"undecodable reply {raw[:60]!r}") from None

    def query(self, command: str) -> str:
        """Write ``command`` and return its one-line reply."""
        self.write(command)
        return self.read(command)


class VisaTransport(Transport):
    """A pyvisa session: pyvisa-py (``@py``) by default, NI-VISA (``@ivi``) or pyvisa-sim.

    Args:
        resource: VISA resource name, e.g. ``TCPIP::10.0.0.5::5025::SOCKET``.
        backend: ``"@py"`` (pyvisa-py, default), ``"@ivi"`` (NI-VISA), ``"auto"`` (NI-VISA
            when installed, else pyvisa-py) or ``"path/to/sim.yaml@sim"`` (pyvisa-sim).
        **kwargs: see :class:`Transport`.
    """

    _rms: dict[str, Any] = {}  # noqa: RUF012 - one ResourceManager per backend, shared
    _rms_lock = threading.Lock()

    def __init__(self, name: str, resource: str, backend: str = "@py", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.resource = resource
        self.backend = backend
        self._res: Any = None

    @classmethod
    def _manager(cls, backend: str) -> Any:
        import pyvisa

        with cls._rms_lock:
            rm = cls._rms.get(backend)
            if rm is None:
                if backend == "auto":
                    try:
                        rm = pyvisa.ResourceManager("@ivi")  # NI-VISA (or another IVI VISA)
                    except (OSError, ValueError, pyvisa.Error):
                        rm = pyvisa.ResourceManager("@py")
                else:
                    rm = pyvisa.ResourceManager(backend)
                cls._rms[backend] = rm
            return rm

    def open(self) -> None:
        """Open the VISA resource with this instrument's timeout and terminations."""
        import pyvisa

        self.close()
        try:
            res = self._manager(self.backend).open_resource(
                self.resource,
                timeout=int(self.timeout_s * 1000),
                open_timeout=int(self.timeout_s * 1000),
            )
        except (pyvisa.Error, OSError, ValueError) as exc:
            raise ConnectionLost(self.name, None, f"cannot open {self.resource}: {exc}") from exc
        res.read_termination = self.read_termination[-1]
        res.write_termination = ""
        self._res = res

    def close(self) -> None:
        """Close this instrument's resource only (never the shared ResourceManager)."""
        res, self._res = self._res, None
        if res is not None:
            with contextlib.suppress(Exception):  # a dead session may fail to close
                res.close()

    @property
    def is_open(self) -> bool:
        """Whether the resource is open."""
        return self._res is not None

    def _need(self, command: str) -> Any:
        if self._res is None:
            raise ConnectionLost(self.name, command, "session is closed")
        return self._res

    def _peer_closed(self) -> bool:
        """Whether a pyvisa-py socket session's peer has hung up (pyvisa-py reports a timeout).

        Only pyvisa-py exposes its sessions' sockets (``visalib.sessions``); for any other
        backend (NI-VISA, pyvisa-sim) nothing can be told, so a timeout stays a timeout.
        """
        import socket

        import pyvisa

        try:
            session = self._res.visalib.sessions[self._res.session]
        except (AttributeError, KeyError, pyvisa.errors.InvalidSession):
            return False
        sock = getattr(session, "interface", None)
        if not isinstance(sock, socket.socket):
            return False
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False  # open, nothing pending: a genuine timeout
        except OSError:
            return True  # reset by the peer, or the socket is already closed

    def _map(self, exc: Exception, command: str) -> Exception:
        import pyvisa

        if isinstance(exc, pyvisa.errors.VisaIOError):
            if exc.error_code == pyvisa.constants.StatusCode.error_timeout:
                if self._res is not None and self._peer_closed():
                    return ConnectionLost(self.name, command, "connection closed by the instrument")
                return InstrumentTimeout(self.name, command, f"no reply within {self.timeout_s} s")
            return ConnectionLost(self.name, command, f"I/O error: {exc.description}")
        return ConnectionLost(self.name, command, f"I/O error: {exc}")

    def write_bytes(self, data: bytes, command: str) -> None:
        """Write raw bytes through VISA."""
        res = self._need(command)
        try:
            res.write_raw(data)
        except Exception as exc:
            raise self._map(exc, command) from exc

    def read_until(self, terminator: bytes, command: str) -> bytes:
        """Read one terminated message through VISA (termination handled by VISA)."""
        res = self._need(command)
        deadline = time.monotonic() + self.timeout_s
        buf = b""
        while True:
            try:
                buf += res.read_raw()
            except Exception as exc:
                raise self._map(exc, command) from exc
            if buf.endswith(terminator):
                return buf
            if time.monotonic() > deadline:
                raise InstrumentTimeout(self.name, command, f"no reply within {self.timeout_s} s")

    def read_bytes(self, n: int, timeout_s: float, command: str = "<stream>") -> bytes:
        """Up to ``n`` raw bytes (VISA reads are bounded by the session timeout)."""
        res = self._need(command)
        try:
            return bytes(res.read_bytes(n, break_on_termchar=False))
        except Exception as exc:
            err = self._map(exc, command)
            if isinstance(err, InstrumentTimeout):
                return b""
            raise err from exc


class SerialTransport(Transport):
    """A pyserial port: ``/dev/ttyUSB0``, ``COM3``, ``/dev/pts/N`` or ``socket://host:port``.

    Args:
        url: anything :func:`serial.serial_for_url` accepts.
        baudrate: line speed (ignored by ``socket://``).
        **kwargs: see :class:`Transport`.
    """

    def __init__(self, name: str, url: str, baudrate: int = 9600, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.url = url
        self.baudrate = int(baudrate)
        self._port: Any = None

    def open(self) -> None:
        """Open the port with this instrument's timeout."""
        import serial

        self.close()
        try:
            self._port = serial.serial_for_url(
                self.url,
                baudrate=self.baudrate,
                timeout=self.timeout_s,
                write_timeout=self.timeout_s,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ConnectionLost(self.name, None, f"cannot open {self.url}: {exc}") from exc

    def close(self) -> None:
        """Close the port; idempotent."""
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(Exception):  # a dead session may fail to close
                port.close()

    @property
    def is_open(self) -> bool:
        """Whether the port is open."""
        return self._port is not None

    def _need(self, command: str) -> Any:
        if self._port is None:
            raise ConnectionLost(self.name, command, "port is closed")
        return self._port

    def write_bytes(self, data: bytes, command: str) -> None:
        """Write raw bytes to the port."""
        import serial

        port = self._need(command)
        try:
            port.write(data)
            port.flush()
        except serial.SerialTimeoutException as exc:
            raise InstrumentTimeout(self.name, command, "write timed out") from exc
        except (serial.SerialException, OSError) as exc:
            raise ConnectionLost(self.name, command, f"write failed: {exc}") from exc

    def read_until(self, terminator: bytes, command: str) -> bytes:
        """Read up to the terminator within ``timeout_s`` in total."""
        import serial

        port = self._need(command)
        try:
            port.timeout = self.timeout_s
            data = port.read_until(terminator)
        except (serial.SerialException, OSError) as exc:
            raise ConnectionLost(self.name, command, f"read failed: {exc}") from exc
        if not data.endswith(terminator):
            raise InstrumentTimeout(
                self.name, command, f"no complete reply within {self.timeout_s} s (got {data!r})"
            )
        return bytes(data)

    def read_bytes(self, n: int, timeout_s: float, command: str = "<stream>") -> bytes:
        """Up to ``n`` raw bytes arriving within ``timeout_s``."""
        import serial

        port = self._need(command)
        try:
            port.timeout = timeout_s
            return bytes(port.read(n))
        except (serial.SerialException, OSError) as exc:
            raise ConnectionLost(self.name, command, f"read failed: {exc}") from exc
