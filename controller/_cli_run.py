"""``qnet run CONFIG``: run the node daemon until SIGTERM or SIGINT."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def run(
    config: Annotated[
        Path, typer.Argument(help="daemon config YAML (e.g. configs/sim-daemon.yaml)")
    ],
    broker: Annotated[
        str | None, typer.Option(help="HOST:PORT overriding the config's MQTT broker")
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "INFO",
    check: Annotated[
        bool, typer.Option("--check", help="validate the config and exit (0 valid, 2 invalid)")
    ] = False,
) -> None:
    """Run the daemon of one node: instruments, acquisition, interlocks, telemetry, commands.

    The config is validated whole before anything starts (exit 2 naming the file,
    key path and expectation). SIGTERM or SIGINT brings the instruments to their
    configured safe state, flushes the telemetry outbox and exits 0 within the
    configured shutdown timeout (5 s by default).
    """
    import asyncio
    import logging
    import signal

    from controller._daemon_config import ConfigError, load_daemon_config
    from controller._logfilter import install_repeat_filter

    before = list(logging.getLogger().handlers)
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # a device down or a flood: one line a minute, with its count (on our handlers only)
    install_repeat_filter(handlers=[h for h in logging.getLogger().handlers if h not in before])
    try:
        cfg = load_daemon_config(config)
    except ConfigError as exc:
        typer.echo(f"qnet run: bad config:\n{exc}", err=True)
        raise typer.Exit(2) from None
    override = None
    if broker is not None:
        from controller._cli_options import parse_host_port
        from telemetry import BrokerSettings

        host, port = parse_host_port(broker)
        base = cfg.daemon.telemetry.broker
        override = (
            base.model_copy(update={"host": host, "port": port})
            if base is not None
            else BrokerSettings(host=host, port=port, client_id=f"qnet-{cfg.node}")
        )
    if check:
        from controller.daemon import outbox_settings
        from telemetry import check_outbox_path

        outbox_problems = (
            check_outbox_path(outbox_settings(cfg).path)
            if override is not None or cfg.daemon.telemetry.broker is not None
            else []
        )
        if outbox_problems:
            lines = "\n".join(f"  daemon.telemetry.outbox.path: {p}" for p in outbox_problems)
            typer.echo(f"qnet run: {config}: telemetry cannot work:\n{lines}", err=True)
            raise typer.Exit(2)
        typer.echo(f"{config}: valid config of node {cfg.node}")
        return

    from controller.daemon import Daemon
    from telemetry import OutboxError

    async def main() -> int:
        try:
            daemon = Daemon(cfg, broker=override)
        except (ConfigError, ValueError) as exc:
            typer.echo(f"qnet run: bad config:\n{exc}", err=True)
            return 2
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.stop)
        try:
            await daemon.run()
        except OutboxError as exc:  # raised before anything started
            typer.echo(f"qnet run: telemetry cannot start: {exc}", err=True)
            return 2
        return 0

    code = asyncio.run(main())
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``qnet run`` to the app."""
    app.command("run")(run)
