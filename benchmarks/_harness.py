"""The benchmark harness behind ``make bench``.

Each ``benchmarks/bench_<area>.py`` module exposes ``run() -> list[Row]``.
The harness runs them all, prints one table and writes ``benchmarks/results.json``.
A run of some areas only replaces those areas' rows there and keeps the others;
each row records its ``area`` and ``when`` it was measured.
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


def merge_rows(
    old_rows: list[dict[str, Any]], new_rows: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """``old_rows`` with the rows of every area in ``new_rows`` replaced, the others kept.

    A row belongs to an area by its ``area`` key; rows written before that key existed
    are matched by name. A re-run area's rows take the place of its first old row.
    """
    area_of_name = {r["name"]: area for area, rows in new_rows.items() for r in rows}
    out: list[dict[str, Any]] = []
    placed: set[str] = set()
    for row in old_rows:
        area = row.get("area")
        replaced_by = area if area in new_rows else None
        if area is None:
            replaced_by = area_of_name.get(row.get("name", ""))
        if replaced_by is None:
            out.append(row)
        elif replaced_by not in placed:
            out.extend(new_rows[replaced_by])
            placed.add(replaced_by)
    for area, rows in new_rows.items():
        if area not in placed:
            out.extend(rows)
    return out


def load_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of an existing ``results.json`` ([] if there is none), to merge into."""
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())["rows"]
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise TypeError("'rows' is not a list of objects")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(
            f"benchmarks: cannot keep the other areas' rows of {path}: {e}; "
            "run every area (no selection) to rewrite it"
        ) from None
    return rows


def write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``results.json``: the rows, with this machine and the time of writing."""
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "rows": rows,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")


def main(selected: list[str] | None = None) -> int:
    """Run the benchmarks (all, or those whose module name contains a selected word)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    old_rows = load_rows(RESULTS) if selected else []  # refuse a bad file before the runs
    rows: list[Row] = []
    by_area: dict[str, list[dict[str, Any]]] = {}
    for name in discover():
        if selected and not any(s in name for s in selected):
            continue
        console.print(f"[bold]running {name}[/bold]")
        module = importlib.import_module(f"benchmarks.{name}")
        area_rows = module.run()
        rows.extend(area_rows)
        when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        area = name.removeprefix("bench_")
        by_area[area] = [{"area": area, "when": when, **asdict(r)} for r in area_rows]
    table = Table(title="qnet benchmarks")
    for col in ("benchmark", "value", "unit", "baseline", "target", "met"):
        table.add_column(col)
    for r in rows:
        base = "" if r.baseline is None else f"{r.baseline:,.4g} ({r.baseline_name})"
        met = "" if r.ok is None else ("[green]yes[/green]" if r.ok else "[red]NO[/red]")
        table.add_row(r.name, f"{r.value:,.4g}", r.unit, base, r.target, met)
    console.print(table)
    if selected and not by_area:
        console.print(f"no benchmark module matches {' '.join(selected)}: {RESULTS} unchanged")
    elif selected:
        write_results(RESULTS, merge_rows(old_rows, by_area))
        console.print(f"wrote the rows of {', '.join(by_area) or 'no area'} into {RESULTS}")
    else:
        write_results(RESULTS, [r for area_rows in by_area.values() for r in area_rows])
        console.print(f"wrote {RESULTS}")
    return 0 if all(r.ok is not False for r in rows) else 1
