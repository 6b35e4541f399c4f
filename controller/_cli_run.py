"""``qnet run CONFIG``: run the node daemon until SIGTERM or SIGINT."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from controller.config import InstrumentConfig


def run(
    config: Annotated[
        Path, typer.Argument(help="daemon config YAML (e.g. configs/sim-daemon.yaml)")
    ],
    broker: Annotated[
        str | None,
        typer.Option(metavar="HOST:PORT", help="overrides the config's MQTT broker address"),
    ] = None,
    log_level: Annotated[
        str, typer.Option(metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR")
    ] = "INFO",
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="validate the config, print the effective safe limits and exit "
            "(0 valid, 2 invalid)",
        ),
    ] = False,
    arm: Annotated[
        bool,
        typer.Option(
            "--arm",
            help="ramp the instruments to daemon.operating_state at start (refused while an "
            "interlock is tripped); without it they keep their state, e.g. the last safe state",
        ),
    ] = False,
) -> None:
    """Run the daemon of one node: instruments, acquisition, interlocks, telemetry, commands.

    The config is validated whole before anything starts (exit 2, one line per problem
    naming the file, line and key): limits inside each model's hardware range, every
    reference resolved, every secret and TLS file readable. --check stops there and
    prints the safe range each instrument will enforce and where it comes from (the
    config or the driver's conservative default). SIGTERM or SIGINT brings the
    instruments to their configured safe state, flushes the telemetry outbox and exits
    0 within the configured shutdown timeout (5 s by default).
    """
    import asyncio
    import logging
    import signal

    from controller._cli_options import fail, fail_problems
    from controller._daemon_config import ConfigError, load_daemon_config
    from controller._logfilter import install_repeat_filter
    from controller.config import Problem

    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail("run", f"unknown log level {log_level!r}; use DEBUG, INFO, WARNING or ERROR")
    before = list(logging.getLogger().handlers)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # a device down or a flood: one line a minute, with its count (on our handlers only)
    install_repeat_filter(handlers=[h for h in logging.getLogger().handlers if h not in before])
    try:
        cfg = load_daemon_config(config)
    except ConfigError as exc:
        fail_problems("run", exc.problems)
    files = cfg.file_problems()
    if files:
        fail_problems("run", [Problem(w, str(config), cfg.line_of(k), k) for k, w in files])
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
    unreadable = cfg.daemon.permissions.secret_problems()  # only where the daemon runs
    if unreadable:
        from controller._daemon_config import format_problems

        typer.echo(f"qnet run: bad config:\n{format_problems(config, unreadable)}", err=True)
        raise typer.Exit(2)
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
        typer.echo(limits_table(cfg.instruments))
        return

    from controller._cli_options import error_line
    from controller.daemon import Daemon
    from telemetry import OutboxError

    async def main() -> int:
        try:
            daemon = Daemon(cfg, broker=override, arm=arm)
        except ConfigError as exc:
            for p in exc.problems:
                typer.echo(error_line("run", p.what, p.where or str(config)), err=True)
            return 2
        except ValueError as exc:
            typer.echo(error_line("run", str(exc), str(config)), err=True)
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


def limits_table(instruments: dict[str, InstrumentConfig]) -> str:
    """The effective safe range of every settable quantity, one row each, 80 columns wide.

    ``source`` says whether the range was configured (``config``) or is the driver's
    documented default (``default``); ranges are in SI units.
    """
    from controller.config import limit_rows

    head = ("device", "quantity", "min", "max", "unit", "source")
    rows = [head] + [
        (r.device, r.quantity, f"{r.lo:.6g}", f"{r.hi:.6g}", r.unit or "-", r.source)
        for r in limit_rows(instruments)
    ]
    widths = [max(len(row[k]) for row in rows) for k in range(len(head))]
    right = {2, 3}
    lines = ["effective safe limits (SI units; source: config or the driver's default):"]
    for row in rows:
        cells = [
            c.rjust(widths[k]) if k in right else c.ljust(widths[k]) for k, c in enumerate(row)
        ]
        lines.append(" ".join(cells).rstrip())
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add ``qnet run`` to the app."""
    app.command("run")(run)
