"""The ``qnet`` command line.

Each command lives in its own ``controller/_cli_<name>.py`` module exposing
``register(app)``; this file only assembles them. Commands import heavy
modules (numba kernels, drivers) inside their function so ``--help`` stays fast.
Exit codes: 0 success, 1 the job ran and found a failure (e.g. an instrument
unreachable), 2 bad usage or bad input (file, config, option).

Every usage error, whichever command and whether click or the command found it, is
printed in one style, ``qnet <command>: error: <what> (<where>)`` with exit 2 (see
:func:`controller._cli_options.error_line`). Help is plain text wrapped to the terminal:
no reStructuredText markup, no type placeholders such as ``<bool>``.
"""

from __future__ import annotations

import importlib
import re
from typing import IO, Any

import typer
from typer.core import TyperGroup

try:  # recent typer ships its own copy of click
    from typer._click import Command, Context, HelpFormatter
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # older typer: click itself
    from click import Command, Context, HelpFormatter  # type: ignore[no-redef]
    from click.exceptions import ClickException, UsageError  # type: ignore[no-redef]

from controller._cli_options import error_line

#: Metavars by typer's type label, for options that take a value (flags show none).
_METAVARS = {"str": "TEXT", "float": "FLOAT", "int": "INTEGER", "path": "PATH", "file": "FILE"}


def plain_help(text: str | None) -> str | None:
    """Help text without reStructuredText markup (``x``, :class:`x`, `x`) for the terminal."""
    if not text:
        return text
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    return re.sub(r"`([^`]+)`", r"\1", text)


def _tidy(cmd: Command, ctx: Context) -> None:
    """Plain help texts and conventional metavars (CONFIG, FLOAT, ...) for one command."""
    if getattr(cmd, "_qnet_tidy", False):
        return
    cmd.help = plain_help(cmd.help)
    for param in cmd.params:
        if hasattr(param, "help"):
            param.help = plain_help(param.help)
        if param.metavar is not None:
            continue
        if param.param_type_name == "argument":
            name = (param.name or "ARG").upper()
            param.metavar = name
            shown = name if param.required else f"[{name}]"
            # usage line: CONFIG as click writes it, not typer's {CONFIG}; no <str> after it
            param._usage_display_name = lambda shown=shown: shown  # type: ignore[attr-defined]
            param.display_type_rich = lambda ctx: None  # type: ignore[attr-defined]
        elif not getattr(param, "is_flag", False):
            try:
                label = str(param.display_type(ctx)).strip("<>")  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                label = ""
            label = label.removesuffix(" range")
            param.metavar = _METAVARS.get(label, (param.name or "VALUE").upper())
    cmd._qnet_tidy = True  # type: ignore[attr-defined]


class CliUsageError(ClickException):
    """A usage error shown as ``qnet <command>: error: <what> (<where>)`` (exit 2)."""

    exit_code = 2

    def __init__(self, command: str, what: str, where: str | None) -> None:
        super().__init__(what)
        self.command = command
        self.where = where

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the one-line error to stderr."""
        typer.echo(error_line(self.command, self.message, self.where), err=True, file=file)


class QnetGroup(TyperGroup):
    """The root command: one error style for every subcommand, plain help."""

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        """The subcommand, its help made plain."""
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            _tidy(cmd, ctx)
        return cmd

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        """Each command with its whole first sentence, wrapped (click cuts it at one line)."""
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: Context) -> Any:
        """Run the subcommand; its usage errors come out in the qnet style."""
        try:
            return super().invoke(ctx)
        except CliUsageError:
            raise
        except UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                raise
            sub = exc.ctx if exc.ctx is not None and exc.ctx.parent is not None else None
            command = sub.info_name if sub is not None and sub.info_name else ""
            hint = f"see 'qnet {command} --help'" if command else "see 'qnet --help'"
            raise CliUsageError(command, exc.format_message(), hint) from None


app = typer.Typer(
    name="qnet",
    cls=QnetGroup,
    help="Control and telemetry for one node of a quantum network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# One line per command module; a module listed here must exist.
_COMMAND_MODULES: list[str] = [
    "_cli_analyze",
    "_cli_sample",
    "demo",
    "_cli_bridge",
    "_cli_devices",
    "_cli_sim",
    "_cli_run",
    "_cli_status",
    "_cli_getset",
    "_cli_calibrate",
    "_cli_kms",
    "_cli_keys",
]


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(f"controller.{name}").register(app)


_register_all()


@app.callback()
def _root() -> None:
    """Control and telemetry for one node of a quantum network."""


def main() -> None:
    """Console entry point of ``qnet``."""
    app()


if __name__ == "__main__":
    main()
