"""Talk to a running daemon over MQTT: one request, one reply (used by the CLI and tests).

A request goes to ``qnet/v1/<node>/cmd/<mqtt-user>/<id>`` and the reply comes back on
``qnet/v1/<node>/reply/<mqtt-user>/<id>``: the broker's ACL lets an MQTT user publish
and read only under its own name, so operators never see each other's requests or
replies. A request for a qnet user with a secret is signed (HMAC-SHA256 with a fresh
timestamp and nonce, :func:`controller.commands.sign_request`); the secret never
leaves this process.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import typer

from telemetry import BrokerSettings

from ._cli_options import parse_host_port


class RemoteError(Exception):
    """The daemon could not be reached or did not answer in time."""


def client_id() -> str:
    """A fresh MQTT client id for a CLI invocation."""
    return f"qnet-cli-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def broker_from(
    config: Path | None, broker: str | None, user: str | None, password_env: str | None
) -> tuple[str, BrokerSettings]:
    """(node, broker settings) from a daemon config and/or ``--broker host:port``.

    The config's broker settings are kept (TLS, keepalive, reconnect timing) except its
    client id (each invocation gets a fresh one) and its credentials: the MQTT user and
    password are the operator's, from ``--mqtt-user`` / ``--mqtt-password-env``.
    ``--broker`` overrides only host and port. Raises ``typer.BadParameter`` for
    unusable input (exit 2).
    """
    from ._daemon_config import ConfigError, load_daemon_config

    node = None
    base: dict[str, Any] = {}
    if config is not None:
        try:
            cfg = load_daemon_config(config)
        except ConfigError as exc:
            raise typer.BadParameter(f"bad config:\n{exc}") from None
        node = cfg.node
        b = cfg.daemon.telemetry.broker
        if b is not None:
            base = b.model_dump(exclude={"client_id", "username", "password"})
    if broker:
        host, port = parse_host_port(broker)
        base.update(host=host, port=port)
    if node is None:
        raise typer.BadParameter("give the daemon's CONFIG (it names the node)")
    pw = None
    if password_env:
        if password_env not in os.environ:
            raise typer.BadParameter(
                f"environment variable {password_env} (--mqtt-password-env) is not set"
            )
        pw = {"env": password_env}
    settings = BrokerSettings.model_validate(
        {**base, "client_id": client_id(), "username": user, "password": pw}
    )
    return node, settings


async def request(
    broker: BrokerSettings, node: str, body: dict[str, Any], timeout_s: float = 10.0
) -> dict[str, Any]:
    """Send one request and return the decoded reply; RemoteError if none arrives.

    A ``token`` in ``body`` is the user's secret: it signs the request and is not sent.
    """
    import aiomqtt

    from telemetry import command_topic, reply_topic

    from ._broker import BrokerSetupError, connect_secrets
    from .commands import sign_request

    rid = uuid.uuid4().hex[:12]
    suffix = f"{broker.username or 'anonymous'}/{rid}"
    body = {"id": rid, **body}
    secret = body.pop("token", None)
    if secret is not None:
        body = sign_request(node, body, secret)
    try:
        password, tls_context = connect_secrets(broker, "daemon.telemetry.broker")
    except BrokerSetupError as exc:
        raise RemoteError(f"cannot connect to broker {broker.host}:{broker.port}: {exc}") from None
    try:
        async with aiomqtt.Client(
            broker.host,
            broker.port,
            identifier=broker.client_id,
            username=broker.username,
            password=password,
            tls_context=tls_context,
            keepalive=broker.keepalive_s,
            clean_session=True,
            protocol=aiomqtt.ProtocolVersion.V311,
            timeout=timeout_s,
        ) as client:
            await client.subscribe(reply_topic(node, suffix), qos=1)
            await client.publish(command_topic(node, suffix), json.dumps(body), qos=1)
            async with asyncio.timeout(timeout_s):
                async for msg in client.messages:
                    payload = msg.payload if isinstance(msg.payload, bytes) else b"{}"
                    reply = json.loads(payload)
                    if reply.get("id") in (body["id"], None):
                        return reply
    except aiomqtt.MqttError as exc:
        raise RemoteError(f"broker {broker.host}:{broker.port} unreachable: {exc}") from None
    except TimeoutError:
        raise RemoteError(
            f"no reply from node {node!r} within {timeout_s:g} s (is `qnet run` running?)"
        ) from None
    raise RemoteError("connection closed before a reply arrived")


def run_request(
    broker: BrokerSettings,
    node: str,
    body: dict[str, Any],
    timeout_s: float,
    as_json: bool,
    command: str = "",
) -> dict[str, Any]:
    """Send a request from a CLI command; print errors and exit 1 on failure."""
    try:
        reply = asyncio.run(request(broker, node, body, timeout_s))
    except RemoteError as exc:
        from controller._cli_options import fail

        fail(command, str(exc), code=1)
    if as_json:
        typer.echo(json.dumps(reply, indent=2))
    if not reply.get("ok"):
        if not as_json:
            typer.echo(f"qnet: {refusal(reply)}", err=True)
        raise typer.Exit(1)
    return reply


def refusal(reply: dict[str, Any]) -> str:
    """One line naming why the daemon refused a request: ``refused (code): message``."""
    err = reply.get("error") or {}
    return f"refused ({err.get('code')}): {err.get('message')}"
