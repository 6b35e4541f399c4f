"""``qnet status CONFIG``: a live terminal view of a running node over MQTT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from controller._cli_options import (
    BROKER,
    CONFIG,
    MQTT_PASSWORD_ENV,
    MQTT_USER,
    TOKEN_ENV,
    USER,
    auth_fields,
)

#: Consecutive unreachable polls after which the live view gives up (exit 1).
MAX_FAILURES = 5


def status(
    config: CONFIG,
    broker: BROKER = None,
    mqtt_user: MQTT_USER = None,
    mqtt_password_env: MQTT_PASSWORD_ENV = None,
    user: USER = None,
    token_env: TOKEN_ENV = None,
    once: Annotated[bool, typer.Option("--once", help="print one JSON snapshot and exit")] = False,
    interval: Annotated[float, typer.Option(help="seconds between refreshes")] = 1.0,
    duration: Annotated[
        float | None, typer.Option(help="stop after this many seconds (default: until Ctrl-C)")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for each reply")] = 5.0,
) -> None:
    """Show rates, QBER and key rate with a short history, device states and interlock events.

    Polls the daemon's ``status`` over MQTT every ``--interval`` seconds; a refusal
    (e.g. ``forbidden``: see ``--user``/``--token-env``) is shown in place of the view.
    Exit 0 on Ctrl-C or after ``--duration``; 1 if the daemon is unreachable
    (``--once``, or 5 polls in a row) or refused the last request; 2 for bad usage.
    """
    import asyncio
    import time

    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from controller._remote import RemoteError, broker_from, refusal, request, run_request
    from controller.status_view import render

    node, b = broker_from(config, broker, mqtt_user, mqtt_password_env)
    thresholds = interlock_thresholds(config)
    body = {"device": "daemon", "action": "status", **auth_fields(user, token_env)}
    if once:
        reply = run_request(b, node, body, timeout, as_json=False, command="status")
        typer.echo(json.dumps(reply["result"], indent=2))
        return
    end = None if duration is None else time.monotonic() + duration
    console = Console()
    failures = 0
    refused = False
    try:
        with Live(console=console, refresh_per_second=4, screen=False) as live:
            while end is None or time.monotonic() < end:
                try:
                    reply = asyncio.run(request(b, node, body, timeout))
                except RemoteError as exc:
                    failures += 1
                    live.update(Text(f"{exc} (attempt {failures})", style="red"))
                    if failures >= MAX_FAILURES:
                        raise typer.Exit(1) from None
                else:
                    failures = 0
                    refused = not reply.get("ok")
                    if refused:
                        live.update(Text(f"qnet status - {node}: {refusal(reply)}", style="red"))
                    else:
                        view = render(reply["result"], f"qnet status - {node}", thresholds)
                        live.update(view)
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
    if refused:
        raise typer.Exit(1)


def interlock_thresholds(config: Path) -> dict[str, float]:
    """Trip levels of the config's ``above`` interlocks by reading (e.g. ``{"qber": 0.11}``).

    They extend the sparklines' scale, so a QBER chart always shows the level that trips
    the interlock. Empty when the config cannot be read (broker_from reports why).
    """
    from controller._daemon_config import ConfigError, load_daemon_config

    try:
        cfg = load_daemon_config(config)
    except ConfigError:
        return {}
    return {
        rule.reading: float(rule.trip_above)
        for rule in cfg.daemon.interlocks.values()
        if rule.kind == "above" and rule.trip_above is not None
    }


def register(app: typer.Typer) -> None:
    """Add ``qnet status`` to the app."""
    app.command("status")(status)
