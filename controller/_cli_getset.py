"""``qnet get`` / ``qnet set``: read or change one setting of a running daemon's instrument."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

_CONFIG = Annotated[Path, typer.Argument(help="the node's daemon config (node name, broker)")]
_BROKER = Annotated[str | None, typer.Option(help="HOST:PORT overriding the config's broker")]
_USER = Annotated[str | None, typer.Option(help="MQTT username (e.g. operator)")]
_PW = Annotated[str | None, typer.Option(help="environment variable holding the MQTT password")]
_QUSER = Annotated[str | None, typer.Option(help="qnet user named in the request")]
_TOKEN = Annotated[
    str | None, typer.Option(help="environment variable holding the qnet user's token")
]
_TIMEOUT = Annotated[float, typer.Option(help="seconds to wait for the reply")]
_JSON = Annotated[bool, typer.Option("--json", help="print the whole JSON reply")]


def _auth(user: str | None, token_env: str | None) -> dict[str, Any]:
    import os

    out: dict[str, Any] = {}
    if user:
        out["user"] = user
    if token_env:
        token = os.environ.get(token_env)
        if token is None:
            raise typer.BadParameter(f"environment variable {token_env} is not set")
        out["token"] = token
    return out


def get(
    config: _CONFIG,
    device: Annotated[str, typer.Argument(help="instrument name, or 'daemon'")],
    setting: Annotated[str, typer.Argument(help="setting or reading, e.g. current_setpoint_a")],
    broker: _BROKER = None,
    mqtt_user: _USER = None,
    mqtt_password_env: _PW = None,
    user: _QUSER = None,
    token_env: _TOKEN = None,
    timeout: _TIMEOUT = 10.0,
    as_json: _JSON = False,
) -> None:
    """Read one setting or reading of an instrument through the running daemon.

    Exit 0 with the value printed; 1 if the daemon refused or is unreachable;
    2 for bad usage.
    """
    from controller._remote import broker_from, run_request

    node, b = broker_from(config, broker, mqtt_user, mqtt_password_env)
    body = {"device": device, "setting": setting, **_auth(user, token_env)}
    reply = run_request(b, node, body, timeout, as_json)
    if not as_json:
        typer.echo(json.dumps(reply["result"].get("value")))


def set_(
    config: _CONFIG,
    device: Annotated[str, typer.Argument(help="instrument name")],
    setting: Annotated[str, typer.Argument(help="setting, e.g. current_setpoint_a")],
    value: Annotated[str, typer.Argument(help="new value as JSON: 0.05, true, false")],
    broker: _BROKER = None,
    mqtt_user: _USER = None,
    mqtt_password_env: _PW = None,
    user: _QUSER = None,
    token_env: _TOKEN = None,
    timeout: _TIMEOUT = 10.0,
    as_json: _JSON = False,
) -> None:
    """Change one setting; the daemon checks it against the instrument's safe range first.

    Exit 0 when applied; 1 if refused (out of range, forbidden, device faulted)
    or the daemon is unreachable; 2 for bad usage (e.g. VALUE is not JSON).
    """
    from controller._remote import broker_from, run_request

    try:
        parsed = json.loads(value)
    except ValueError:
        raise typer.BadParameter(f"VALUE must be JSON (0.05, true, false), got {value!r}") from None
    node, b = broker_from(config, broker, mqtt_user, mqtt_password_env)
    body = {"device": device, "setting": setting, "value": parsed, **_auth(user, token_env)}
    reply = run_request(b, node, body, timeout, as_json)
    if not as_json:
        typer.echo(f"{device}.{setting} = {json.dumps(reply['result'].get('value'))}")


def register(app: typer.Typer) -> None:
    """Add ``qnet get`` and ``qnet set`` to the app."""
    app.command("get")(get)
    app.command("set")(set_)
