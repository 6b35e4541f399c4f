"""Options shared by the commands that talk to a running daemon (get, set, status, calibrate).

Also the one error style of every command, ``qnet <command>: error: <what> (<where>)``
with exit 2 (:func:`error_line`, :func:`fail`, :func:`fail_problems`). One place for their
help texts, for turning ``--user``/``--token-env`` into request fields
(so every remote command authenticates the same way) and for parsing ``--broker HOST:PORT``
(also used by ``qnet run`` and ``qnet demo``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from controller.config import Problem

CONFIG = Annotated[Path, typer.Argument(help="the node's daemon config (node name, broker)")]
BROKER = Annotated[
    str | None, typer.Option(metavar="HOST:PORT", help="overrides the config's broker address")
]
MQTT_USER = Annotated[str | None, typer.Option(help="MQTT username (e.g. operator)")]
MQTT_PASSWORD_ENV = Annotated[
    str | None,
    typer.Option(metavar="VAR", help="environment variable holding the MQTT password"),
]
USER = Annotated[str | None, typer.Option(help="qnet user named in the request")]
TOKEN_ENV = Annotated[
    str | None,
    typer.Option(metavar="VAR", help="environment variable holding the qnet user's token"),
]
AS_JSON = Annotated[bool, typer.Option("--json", help="print the whole JSON reply")]


def auth_fields(user: str | None, token_env: str | None) -> dict[str, Any]:
    """The ``user`` and ``token`` fields of a request; the token is read from ``token_env``."""
    out: dict[str, Any] = {}
    if user:
        out["user"] = user
    if token_env:
        token = os.environ.get(token_env)
        if token is None:
            raise typer.BadParameter(f"environment variable {token_env} is not set")
        out["token"] = token
    return out


def parse_host_port(text: str, option: str = "--broker") -> tuple[str, int]:
    """``(host, port)`` from ``HOST:PORT``; ``typer.BadParameter`` (exit 2) if malformed."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise typer.BadParameter(f"{option} must be HOST:PORT (port 1-65535), got {text!r}")
    return host, int(port)


def error_line(command: str, what: str, where: str | None = None) -> str:
    """``qnet <command>: error: <what> (<where>)``: the one error style of the command line."""
    head = f"qnet {command}" if command else "qnet"
    what = " ".join(str(what).split())
    return f"{head}: error: {what}" + (f" ({where})" if where else "")


def fail(command: str, what: str, where: str | None = None, code: int = 2) -> NoReturn:
    """Print one error line to stderr and exit (2: bad usage or input)."""
    typer.echo(error_line(command, what, where), err=True)
    raise typer.Exit(code)


def fail_problems(command: str, problems: Iterable[Problem], code: int = 2) -> NoReturn:
    """One error line per config problem (``what (file:line: key.path)``), then exit."""
    for p in problems:
        typer.echo(error_line(command, p.what, p.where or None), err=True)
    raise typer.Exit(code)


def fail_text(command: str, text: str, path: str | Path | None = None, code: int = 2) -> NoReturn:
    """Errors from a room that words them as ``path[:line]: what`` lines, in the qnet style.

    The ``path[:line]`` prefix becomes the ``(where)``; other lines are kept whole.
    """
    prefix = str(path) if path is not None else None
    for line in str(text).splitlines() or [str(text)]:
        where = None
        what = line
        if prefix and line.startswith(prefix):
            rest = line[len(prefix) :]
            head, sep, tail = rest.partition(": ")
            if sep and (not head or head.lstrip(":").isdigit()):
                where, what = prefix + head, tail
        typer.echo(error_line(command, what, where), err=True)
    raise typer.Exit(code)
