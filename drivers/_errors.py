"""The exception tree of the driver layer.

Every error names the instrument and the command that failed, so a log line
or a CLI message is enough to find the bench and the exchange at fault.
"""

from __future__ import annotations


class InstrumentError(Exception):
    """Base of every driver error; carries ``instrument`` (configured name) and ``command``."""

    def __init__(self, instrument: str, command: str | None, detail: str) -> None:
        self.instrument = instrument
        self.command = command
        self.detail = detail
        where = f"{instrument}" if command is None else f"{instrument} [{command!r}]"
        super().__init__(f"{where}: {detail}")


class InstrumentTimeout(InstrumentError, TimeoutError):
    """No (complete) reply arrived within the instrument's configured timeout."""


class ConnectionLost(InstrumentError, ConnectionError):
    """The session broke (unplugged, power-cycled, refused); a reconnect is needed."""


class InstrumentReportedError(InstrumentError):
    """The instrument itself reported an error (SCPI error queue or an error reply)."""


class UnexpectedReply(InstrumentError):
    """A reply arrived but cannot be parsed as what the command should return."""


class IdentityMismatch(InstrumentError):
    """The instrument at the configured address is not the configured model."""


class LimitError(InstrumentError, ValueError):
    """A setpoint is outside its configured safe range (or not finite); nothing was sent."""
