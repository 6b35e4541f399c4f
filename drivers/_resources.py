"""Socket resource addresses: ``TCPIP::host::port::SOCKET`` (VISA) and ``socket://host:port``.

One place for reading the host and port out of a configured resource and for moving it to
another port (the emulated testbed, the sim node and the HIL suite serve on free ports).
"""

from __future__ import annotations

import re

_VISA_SOCKET = re.compile(r"(?i)TCPIP\d*::([^:]+)::(\d+)::SOCKET")
_SERIAL_SOCKET = re.compile(r"socket://([^:/]+):(\d+)/?")


def socket_address(resource: str) -> tuple[str, int]:
    """``(host, port)`` of a socket resource; ValueError naming the accepted forms otherwise."""
    text = resource.strip()
    m = _VISA_SOCKET.fullmatch(text) or _SERIAL_SOCKET.fullmatch(text)
    if m is None:
        raise ValueError(
            f"{resource!r} is not a socket resource: expected TCPIP::HOST::PORT::SOCKET "
            "or socket://HOST:PORT"
        )
    return m.group(1), int(m.group(2))


def with_port(resource: str, port: int) -> str:
    """``resource`` moved to ``port``, same host and form; ValueError if it is no socket."""
    host, _ = socket_address(resource)
    text = resource.strip()
    if text.startswith("socket://"):
        return f"socket://{host}:{port}"
    board = text.split("::", 1)[0]  # TCPIP or TCPIP0
    return f"{board}::{host}::{port}::SOCKET"
