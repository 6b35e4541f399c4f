"""The benchmark harness behind ``make bench``.

Each ``benchmarks/bench_<area>.py`` module exposes ``run() -> list[Row]``.
The harness runs them all, prints one table and writes ``benchmarks/results.json``.
"""

from __future__ import annotations

import gc
import importlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results.json")


@dataclass
class Row:
    """One measured figure, its target and (where there is one) its baseline."""

    name: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None
    baseline: float | None = None
    baseline_name: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def best_of(fn: Callable[[], object], repeat: int = 5, min_time_s: float = 0.0) -> float:
    """Best wall-clock seconds of ``repeat`` calls (after gc), for throughput figures."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        if min_time_s and dt > min_time_s:
            break
    return best


def discover() -> list[str]:
    """Names of the benchmark modules, sorted."""
    here = Path(__file__).parent
    return sorted(p.stem for p in here.glob("bench_*.py"))


def main(selected: list[str] | None = None) -> int:
    """Run the benchmarks (all, or those whose module name contains a selected word)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    rows: list[Row] = []
    for name in discover():
        if selected and not any(s in name for s in selected):
            continue
        console.print(f"[bold]running {name}[/bold]")
        module = importlib.import_module(f"benchmarks.{name}")
        rows.extend(module.run())
    table = Table(title="qnet benchmarks")
    for col in ("benchmark", "value", "unit", "baseline", "target", "met"):
        table.add_column(col)
    for r in rows:
        base = "" if r.baseline is None else f"{r.baseline:,.4g} ({r.baseline_name})"
        met = "" if r.ok is None else ("[green]yes[/green]" if r.ok else "[red]NO[/red]")
        table.add_row(r.name, f"{r.value:,.4g}", r.unit, base, r.target, met)
    console.print(table)
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "rows": [asdict(r) for r in rows],
    }
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"wrote {RESULTS}")
    return 0 if all(r.ok is not False for r in rows) else 1
