"""Options shared by the commands that talk to a running daemon (get, set, status, calibrate).

One place for their help texts, for turning ``--user``/``--token-env`` into request fields
(so every remote command authenticates the same way) and for parsing ``--broker HOST:PORT``
(also used by ``qnet run`` and ``qnet demo``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

CONFIG = Annotated[Path, typer.Argument(help="the node's daemon config (node name, broker)")]
BROKER = Annotated[str | None, typer.Option(help="HOST:PORT overriding the config's broker")]
MQTT_USER = Annotated[str | None, typer.Option(help="MQTT username (e.g. operator)")]
MQTT_PASSWORD_ENV = Annotated[
    str | None, typer.Option(help="environment variable holding the MQTT password")
]
USER = Annotated[str | None, typer.Option(help="qnet user named in the request")]
TOKEN_ENV = Annotated[
    str | None, typer.Option(help="environment variable holding the qnet user's token")
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
