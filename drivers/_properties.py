"""Validated property descriptors for drivers (in the style of PyMeasure's ``Instrument.control``).

``measurement`` is read-only; ``control`` reads and sets; ``switch`` is an
on/off control. Values at the Python side are SI (a ``scale`` converts to the
instrument's wire unit, e.g. metres -> nanometres). A set is checked against the
instrument's configured safe range (``limits_key``) *before* anything is
formatted or sent: out of range, NaN or infinite raises :class:`LimitError`.
A control accepts its own reading (QCoDeS's rule): reading back a value and
setting it again is always allowed while the value is in range.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from ._errors import LimitError, UnexpectedReply

if TYPE_CHECKING:
    from ._instrument import Instrument

T = TypeVar("T")


def parse_float(reply: str) -> float:
    """A finite float from an ASCII reply (first comma-separated field)."""
    value = float(reply.strip().split(",")[0])
    if not math.isfinite(value):
        raise ValueError(f"non-finite value {reply!r}")
    return value


def parse_int(reply: str) -> int:
    """An integer from an ASCII reply (accepts ``"12"`` and ``"1.2E+1"``)."""
    text = reply.strip().split(",")[0]
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise ValueError(f"not an integer: {reply!r}") from None
        return int(value)


def parse_bool(reply: str) -> bool:
    """``1/0``, ``ON/OFF`` or ``TRUE/FALSE`` as a bool."""
    text = reply.strip().upper()
    if text in ("1", "ON", "TRUE"):
        return True
    if text in ("0", "OFF", "FALSE"):
        return False
    raise ValueError(f"not a boolean: {reply!r}")


class measurement(Generic[T]):
    """A read-only quantity: ``get_cmd`` is queried and its reply parsed (SI = wire / scale)."""

    def __init__(
        self,
        get_cmd: str,
        parse: Callable[[str], T] = parse_float,  # type: ignore[assignment]
        *,
        scale: float = 1.0,
        doc: str = "",
    ) -> None:
        self.get_cmd = get_cmd
        self.parse = parse
        self.scale = scale
        self.__doc__ = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> measurement[T]: ...
    @overload
    def __get__(self, obj: Instrument, objtype: type | None = None) -> T: ...
    def __get__(self, obj: Instrument | None, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return self.read(obj)

    def read(self, obj: Instrument) -> T:
        """Query and parse the quantity."""
        reply = obj.query(self.get_cmd)
        return self.decode(obj, reply)

    def decode(self, obj: Instrument, reply: str) -> T:
        """Parse one reply; any parse failure becomes UnexpectedReply."""
        try:
            value = self.parse(reply)
        except (ValueError, IndexError) as exc:
            raise UnexpectedReply(
                obj.name, self.get_cmd, f"cannot parse {reply!r} as {self.name}: {exc}"
            ) from None
        if self.scale != 1.0 and isinstance(value, int | float) and not isinstance(value, bool):
            return value / self.scale  # type: ignore[return-value]
        return value


class control(measurement[float]):
    """A settable number with a configured safe range.

    Args:
        get_cmd: query returning the current setpoint.
        set_fmt: ``str.format`` template taking the wire value, e.g. ``"SOUR:CURR {:.6E}"``.
        limits_key: key of the safe range in the instrument's limits (default: attribute name).
        scale: wire value = SI value * scale.
        integer: round the wire value to an integer before formatting.
    """

    def __init__(
        self,
        get_cmd: str,
        set_fmt: str,
        parse: Callable[[str], float] = parse_float,
        *,
        limits_key: str | None = None,
        scale: float = 1.0,
        integer: bool = False,
        doc: str = "",
    ) -> None:
        super().__init__(get_cmd, parse, scale=scale, doc=doc)
        self.set_fmt = set_fmt
        self.limits_key = limits_key
        self.integer = integer

    def __set_name__(self, owner: type, name: str) -> None:
        super().__set_name__(owner, name)
        if self.limits_key is None:
            self.limits_key = name

    def __set__(self, obj: Instrument, value: float) -> None:
        obj.write_checked(self.format(obj, value))

    def format(self, obj: Instrument, value: float) -> str:
        """The exact command for ``value``, after the limit check (raises LimitError)."""
        checked = obj.check_limit(str(self.limits_key), value, self.set_fmt)
        wire: float | int = checked * self.scale
        if self.integer and self.scale == 1.0 and not checked.is_integer():
            raise LimitError(
                obj.name, self.set_fmt, f"{self.name} must be a whole number, got {value!r}"
            )
        if self.integer:
            wire = obj.round_into_limit(str(self.limits_key), wire, self.scale, self.set_fmt)
        return self.set_fmt.format(wire)


class switch(measurement[bool]):
    """An on/off control: ``set_fmt`` takes ``on_text`` or ``off_text``."""

    def __init__(
        self,
        get_cmd: str,
        set_fmt: str,
        *,
        on_text: str = "ON",
        off_text: str = "OFF",
        doc: str = "",
    ) -> None:
        super().__init__(get_cmd, parse_bool, doc=doc)
        self.set_fmt = set_fmt
        self.on_text = on_text
        self.off_text = off_text

    def __set__(self, obj: Instrument, value: bool) -> None:
        if not isinstance(value, bool | int) or value not in (0, 1):
            raise TypeError(f"{obj.name}: {self.name} takes True or False, got {value!r}")
        obj.write_checked(self.set_fmt.format(self.on_text if value else self.off_text))
