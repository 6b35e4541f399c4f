"""The ``qnet`` command line.

Each command lives in its own ``controller/_cli_<name>.py`` module exposing
``register(app)``; this file only assembles them. Commands import heavy
modules (numba kernels, drivers) inside their function so ``--help`` stays fast.
Exit codes: 0 success, 1 the job ran and found a failure (e.g. an instrument
unreachable), 2 bad usage or bad input (file, config, option).
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="qnet",
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
