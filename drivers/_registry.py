"""Driver registry and the factory that builds a configured, unopened instrument."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._instrument import Instrument, ReconnectPolicy
from ._transport import SerialTransport, Transport, VisaTransport
from .idq_id120 import IDQuantiqueID120
from .idq_id1000 import IDQuantiqueID1000
from .keithley_2400 import Keithley2400
from .meadowlark_d3050 import MeadowlarkD3050
from .thorlabs_cld1015 import ThorlabsCLD1015
from .thorlabs_pm100 import ThorlabsPM100

#: Driver key (as written in configs) -> driver class.
DRIVERS: dict[str, type[Instrument]] = {
    "thorlabs_cld1015": ThorlabsCLD1015,
    "keithley_2400": Keithley2400,
    "idq_id120": IDQuantiqueID120,
    "thorlabs_pm100": ThorlabsPM100,
    "meadowlark_d3050": MeadowlarkD3050,
    "idq_id1000": IDQuantiqueID1000,
}

_SERIAL_PREFIXES = ("socket://", "rfc2217://", "loop://", "spy://", "/dev/", "COM")


def is_serial_resource(resource: str) -> bool:
    """Whether ``resource`` is a pyserial URL or port (else it is a VISA resource name)."""
    return resource.startswith(_SERIAL_PREFIXES)


def make_transport(
    name: str,
    resource: str,
    *,
    driver: type[Instrument],
    backend: str | None = None,
    timeout_s: float = 1.0,
    write_termination: str | None = None,
    read_termination: str | None = None,
    baudrate: int | None = None,
) -> Transport:
    """The transport a resource string asks for, with the driver's default terminations."""
    wterm = driver.WRITE_TERMINATION if write_termination is None else write_termination
    rterm = driver.READ_TERMINATION if read_termination is None else read_termination
    common: dict[str, Any] = {
        "timeout_s": timeout_s,
        "write_termination": wterm,
        "read_termination": rterm,
    }
    if resource.startswith("zmq://"):
        from ._zmq import ZmqTransport

        return ZmqTransport(name, resource, timeout_s=timeout_s)
    if is_serial_resource(resource):
        return SerialTransport(name, resource, baudrate=baudrate or driver.BAUDRATE, **common)
    return VisaTransport(name, resource, backend=backend or "@py", **common)


def make_instrument(
    name: str,
    driver: str,
    resource: str,
    *,
    backend: str | None = None,
    timeout_s: float = 1.0,
    write_termination: str | None = None,
    read_termination: str | None = None,
    baudrate: int | None = None,
    limits: Mapping[str, tuple[float, float]] | None = None,
    identity: str | None = None,
    options: Mapping[str, Any] | None = None,
    reconnect: ReconnectPolicy | None = None,
) -> Instrument:
    """Build (but do not open) the driver ``driver`` for the instrument ``name``."""
    try:
        cls = DRIVERS[driver]
    except KeyError:
        raise ValueError(
            f"{name}: unknown driver {driver!r} (known: {', '.join(sorted(DRIVERS))})"
        ) from None
    transport = make_transport(
        name,
        resource,
        driver=cls,
        backend=backend,
        timeout_s=timeout_s,
        write_termination=write_termination,
        read_termination=read_termination,
        baudrate=baudrate,
    )
    return cls(
        name,
        transport,
        limits=limits,
        identity_pattern=identity,
        reconnect=reconnect,
        options=options,
    )
