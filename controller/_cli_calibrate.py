"""``qnet calibrate CONFIG``: ask a running daemon to find the channel delays now."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from controller._cli_options import (
    AS_JSON,
    BROKER,
    CONFIG,
    MQTT_PASSWORD_ENV,
    MQTT_USER,
    TOKEN_ENV,
    USER,
    auth_fields,
)


def calibrate(
    config: CONFIG,
    broker: BROKER = None,
    mqtt_user: MQTT_USER = None,
    mqtt_password_env: MQTT_PASSWORD_ENV = None,
    user: USER = None,
    token_env: TOKEN_ENV = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the result")] = 60.0,
    as_json: AS_JSON = False,
) -> None:
    """Capture tags, find every channel's delay with the core's delay finder, apply them.

    Prints the delays (ps). Exit 0 on success; 1 if no significant peak was
    found or the daemon is unreachable; 2 for bad usage.
    """
    from controller._remote import broker_from, run_request

    node, b = broker_from(config, broker, mqtt_user, mqtt_password_env)
    body = {"device": "daemon", "action": "calibrate", **auth_fields(user, token_env)}
    reply = run_request(b, node, body, timeout, as_json, command="calibrate")
    if not as_json:
        res = reply["result"]
        typer.echo(f"delays_ps: {json.dumps(res.get('delays_ps'))}")
        if res.get("unresolved"):
            typer.echo(f"unresolved channels (delay unchanged): {res['unresolved']}")


def register(app: typer.Typer) -> None:
    """Add ``qnet calibrate`` to the app."""
    app.command("calibrate")(calibrate)
