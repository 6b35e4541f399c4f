"""``qnet get`` / ``qnet set``: read or change one setting of a running daemon's instrument."""

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

_TIMEOUT = Annotated[float, typer.Option(help="seconds to wait for the reply")]


def get(
    config: CONFIG,
    device: Annotated[str, typer.Argument(help="instrument name, or 'daemon'")],
    setting: Annotated[str, typer.Argument(help="setting or reading, e.g. current_setpoint_a")],
    broker: BROKER = None,
    mqtt_user: MQTT_USER = None,
    mqtt_password_env: MQTT_PASSWORD_ENV = None,
    user: USER = None,
    token_env: TOKEN_ENV = None,
    timeout: _TIMEOUT = 10.0,
    as_json: AS_JSON = False,
) -> None:
    """Read one setting or reading of an instrument through the running daemon.

    Exit 0 with the value printed; 1 if the daemon refused or is unreachable;
    2 for bad usage.
    """
    from controller._remote import broker_from, run_request

    node, b = broker_from(config, broker, mqtt_user, mqtt_password_env)
    body = {"device": device, "setting": setting, **auth_fields(user, token_env)}
    reply = run_request(b, node, body, timeout, as_json, command="get")
    if not as_json:
        res = reply["result"]
        # a device's reading is {"value": ...}; a daemon reading (status, ...) is the whole result
        value = res["value"] if isinstance(res, dict) and set(res) == {"value"} else res
        typer.echo(json.dumps(value, indent=None if device != "daemon" else 2))


def set_(
    config: CONFIG,
    device: Annotated[str, typer.Argument(help="instrument name")],
    setting: Annotated[str, typer.Argument(help="setting, e.g. current_setpoint_a")],
    value: Annotated[str, typer.Argument(help="new value as JSON: 0.05, true, false")],
    broker: BROKER = None,
    mqtt_user: MQTT_USER = None,
    mqtt_password_env: MQTT_PASSWORD_ENV = None,
    user: USER = None,
    token_env: TOKEN_ENV = None,
    timeout: _TIMEOUT = 10.0,
    as_json: AS_JSON = False,
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
    body = {"device": device, "setting": setting, "value": parsed, **auth_fields(user, token_env)}
    reply = run_request(b, node, body, timeout, as_json, command="set")
    if not as_json:
        typer.echo(f"{device}.{setting} = {json.dumps(reply['result'].get('value'))}")


def register(app: typer.Typer) -> None:
    """Add ``qnet get`` and ``qnet set`` to the app."""
    app.command("get")(get)
    # a negative VALUE (-0.01) is a value, not an unknown option
    app.command("set", context_settings={"ignore_unknown_options": True})(set_)
