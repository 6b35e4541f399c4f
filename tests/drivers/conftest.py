"""Shared fixtures of the driver tests: a scripted fake transport and emulator servers."""

from __future__ import annotations

import pytest

from drivers import Transport
from drivers.sim.server import InstrumentServer

IDENTITIES = {
    "ThorlabsCLD1015": "Thorlabs,CLD1015,M00000001,1.1.0",
    "Keithley2400": "KEITHLEY INSTRUMENTS INC.,MODEL 2400,4000001,C30/A02",
    "IDQuantiqueID120": "ID Quantique,ID120,1001,3.2.1",
    "ThorlabsPM100": "Thorlabs,PM100D,P0000001,2.6.0",
    "MeadowlarkD3050": "Meadowlark Optics D3050 v1.05",
    "IDQuantiqueID1000": "ID Quantique,ID1000,TC-0001,2.1.0",
}
CONNECT_EXTRA = {
    "Keithley2400": [
        (":SOUR:FUNC CURR", None),
        (':SENS:FUNC "VOLT"', None),
        (":FORM:ELEM VOLT", None),
    ]
}


class FakeTransport(Transport):
    """Asserts the exact bytes written and answers with scripted replies (ours is the protocol)."""

    def __init__(self, name, wterm, rterm):
        super().__init__(name, timeout_s=0.1, write_termination=wterm, read_termination=rterm)
        self.script: list[tuple[bytes, bytes | None]] = []
        self.sent: list[bytes] = []
        self._pending: list[bytes] = []
        self._open = False

    def expect(self, pairs):
        """Queue ``(command, reply_or_None)`` exchanges, terminations added."""
        for cmd, reply in pairs:
            out = (cmd + self.write_termination).encode()
            back = None if reply is None else (reply + self.read_termination).encode()
            self.script.append((out, back))

    def open(self):
        self._open = True

    def close(self):
        self._open = False

    @property
    def is_open(self):
        return self._open

    def write_bytes(self, data, command):
        self.sent.append(data)
        assert self.script, f"unexpected write {data!r}: nothing more was expected"
        out, back = self.script.pop(0)
        assert data == out, f"wrote {data!r}, expected {out!r}"
        if back is not None:
            self._pending.append(back)

    def read_until(self, terminator, command):
        assert self._pending, f"read for {command!r} but no reply is due"
        return self._pending.pop(0)

    def read_bytes(self, n, timeout_s, command="<stream>"):
        return b""


def fake_instrument(cls, **kwargs):
    """A connected driver on a FakeTransport (identity exchange already consumed)."""
    fake = FakeTransport("dev", cls.WRITE_TERMINATION, cls.READ_TERMINATION)
    inst = cls("dev", fake, **kwargs)
    fake.expect([(cls.IDN_QUERY, IDENTITIES[cls.__name__]), *CONNECT_EXTRA.get(cls.__name__, [])])
    inst.connect()
    assert not fake.script
    fake.sent.clear()
    return inst, fake


@pytest.fixture(name="fake_instrument")
def _fake_instrument_fixture():
    """The :func:`fake_instrument` factory."""
    return fake_instrument


@pytest.fixture
def serve():
    """Start InstrumentServers for emulators; all stopped at teardown."""
    servers = []

    def start(emulator, **kwargs):
        s = InstrumentServer(emulator, **kwargs).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()
