"""``qnet devices CONFIG``: list the configured instruments with identity, state and readings."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from controller.config import NodeConfig


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _probe(name: str, cfg: Any) -> dict[str, Any]:
    """Connect to one instrument, read its key readings and close; never raises."""
    from drivers import IdentityMismatch, InstrumentError

    row: dict[str, Any] = {
        "name": name,
        "driver": cfg.driver,
        "resource": cfg.resource,
        "identity": None,
        "state": "unreachable",
        "readings": {},
    }
    try:
        inst = cfg.build(name)
    except ValueError as exc:
        row["state"] = f"bad config: {exc}"
        return row
    row["model"] = inst.MODEL
    try:
        row["identity"] = inst.connect()
        row["readings"] = inst.readings()
        row["state"] = "ready"
    except IdentityMismatch as exc:
        row["state"] = f"wrong identity: {exc.detail}"
    except InstrumentError as exc:
        state = "ready" if inst.connected or row["identity"] else "unreachable"
        row["state"] = f"{state}: {exc.detail}" if state == "unreachable" else f"error: {exc}"
    finally:
        inst.close()
    return row


def _load(config: Path) -> NodeConfig:
    """The node config of ``config``, a node config or a daemon config.

    A daemon config's ``node_config:`` is followed (its instruments and node name merged
    in, as ``qnet run`` does); its ``daemon:`` section is not checked here.
    """
    from pydantic import ValidationError

    from controller._daemon_config import read_daemon_doc
    from controller.config import ConfigError, NodeConfig, validation_problems

    doc = read_daemon_doc(config)
    try:
        return NodeConfig.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, doc, NodeConfig)) from None


def devices(
    config: Annotated[
        Path,
        typer.Argument(help="node or daemon config YAML (e.g. configs/sim-node.yaml)"),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="print JSON rows instead of a table")
    ] = False,
) -> None:
    """List each configured instrument with its identity, state and a few readings.

    Every instrument is checked in parallel within its configured timeout.
    Exit 0 when all are ready, 1 when one is unreachable or answers wrongly,
    2 for a bad config file.
    """
    from rich.console import Console
    from rich.table import Table

    from controller._cli_options import fail_problems
    from controller.config import ConfigError

    try:
        cfg = _load(config)
    except ConfigError as exc:
        fail_problems("devices", exc.problems)
    names = list(cfg.instruments)
    rows: dict[str, dict[str, Any]] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, min(16, len(names))))
    futures = {pool.submit(_probe, n, cfg.instruments[n]): n for n in names}
    budget = 2.0 + 6 * max((c.timeout_s for c in cfg.instruments.values()), default=1.0)
    done, _ = wait(futures, timeout=budget)
    for fut, n in futures.items():
        if fut in done:
            rows[n] = fut.result()
        else:
            ic = cfg.instruments[n]
            rows[n] = {
                "name": n,
                "driver": ic.driver,
                "resource": ic.resource,
                "identity": None,
                "state": f"unreachable: no answer within {budget:.1f} s",
                "readings": {},
            }
    pool.shutdown(wait=False, cancel_futures=True)
    ordered = [rows[n] for n in names]
    failed = [r["name"] for r in ordered if r["state"] != "ready"]
    if as_json:
        typer.echo(json.dumps({"node": cfg.node, "instruments": ordered}, default=str, indent=2))
    else:
        table = Table(title=f"instruments of node {cfg.node} ({config})")
        for col in ("name", "driver", "resource", "identity", "state", "readings"):
            table.add_column(col, overflow="fold")
        for r in ordered:
            readings = ", ".join(f"{k}={_fmt(v)}" for k, v in r["readings"].items())
            state = r["state"]
            style = "green" if state == "ready" else "red"
            table.add_row(
                r["name"],
                r.get("model", r["driver"]),
                r["resource"],
                r["identity"] or "-",
                f"[{style}]{state}[/{style}]",
                readings,
            )
        Console(width=200 if not sys.stdout.isatty() else None).print(table)
        if failed:
            typer.echo(f"not ready: {', '.join(failed)}", err=True)
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``qnet devices`` to the app."""
    app.command("devices")(devices)
