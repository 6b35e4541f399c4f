"""``qnet calibrate CONFIG``: ask a running daemon to find the channel delays now."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def calibrate(
    config: Annotated[Path, typer.Argument(help="the node's daemon config (node name, broker)")],
    broker: Annotated[str | None, typer.Option(help="HOST:PORT overriding the broker")] = None,
    mqtt_user: Annotated[str | None, typer.Option(help="MQTT username")] = None,
    mqtt_password_env: Annotated[
        str | None, typer.Option(help="environment variable holding the MQTT password")
    ] = None,
    user: Annotated[str | None, typer.Option(help="qnet user named in the request")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the result")] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the whole JSON reply")] = False,
) -> None:
    """Capture tags, find every channel's delay with the core's delay finder, apply them.

    Prints the delays (ps). Exit 0 on success; 1 if no significant peak was
    found or the daemon is unreachable; 2 for bad usage.
    """
    from controller._remote import broker_from, run_request

    node, b = broker_from(config, broker, mqtt_user, mqtt_password_env)
    body: dict[str, object] = {"device": "daemon", "action": "calibrate"}
    if user:
        body["user"] = user
    reply = run_request(b, node, body, timeout, as_json)
    if not as_json:
        res = reply["result"]
        typer.echo(f"delays_ps: {json.dumps(res.get('delays_ps'))}")
        if res.get("unresolved"):
            typer.echo(f"unresolved channels (delay unchanged): {res['unresolved']}")


def register(app: typer.Typer) -> None:
    """Add ``qnet calibrate`` to the app."""
    app.command("calibrate")(calibrate)
