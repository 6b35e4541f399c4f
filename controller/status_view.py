"""The live terminal view of a node (``qnet status``, the demo), from ``daemon.status``."""

from __future__ import annotations

import math
import time
from typing import Any

_SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None], width: int = 40) -> str:
    """A one-line chart of the last ``width`` values (gaps for missing values)."""
    vals = values[-width:]
    finite = [v for v in vals if v is not None and math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = hi - lo or 1.0
    out = []
    for v in vals:
        if v is None or not math.isfinite(v):
            out.append(" ")
        else:
            out.append(_SPARK[min(len(_SPARK) - 1, int((v - lo) / span * (len(_SPARK) - 1)))])
    return "".join(out)


def _fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.1f} "


def _with_unit(x: float | None, unit: str) -> str:
    """``35.18 kHz``, or ``-`` (no unit) when unknown."""
    return "-" if x is None else _fmt_rate(x) + unit


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def capture_line(capture: dict[str, Any] | None, width: int = 20) -> str:
    """``capture [####......] 0.4 / 1.0 s`` for a running raw-tag capture ("" when idle).

    The daemon captures raw tags to calibrate (``qnet calibrate``), track drift and
    compensate; this shows how much tag time it has of what it needs.
    """
    if not capture:
        return ""
    done = float(capture.get("collected_s") or 0.0)
    want = float(capture.get("duration_s") or 0.0)
    frac = min(1.0, max(0.0, done / want)) if want > 0 else 0.0
    filled = round(frac * width)
    bar = "#" * filled + "." * (width - filled)
    return f"capture [{bar}] {done:.1f} / {want:.1f} s"


def render(status: dict[str, Any], title: str = "") -> Any:
    """A rich renderable of one ``daemon.status`` snapshot, compact enough for 80 x 24."""
    from rich import box
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    hist = status.get("history") or []
    last = status.get("last_window") or {}
    cal = status.get("calibration") or {}
    comp = status.get("compensation") or {}
    head = Text()
    head.append(f"node {status.get('node')}", style="bold")
    head.append(
        f"  link {status.get('link')}  acquisition {status.get('acquisition')}"
        f"  windows {status.get('windows')}  up {status.get('uptime_s', 0):.0f} s\n"
    )
    head.append("key ")
    head.append(*(("PAUSED", "red") if status.get("key_paused") else ("running", "green")))
    head.append(f"  calibration {cal.get('state')}  compensation {comp.get('state')}")
    if comp.get("qber") is not None:
        head.append(f" (mean QBER {_pct(comp.get('qber'))})")
    cap = capture_line(status.get("capture"))
    rates = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False, padding=(0, 1))
    rates.add_column("link", no_wrap=True)
    rates.add_column("now", no_wrap=True)
    rates.add_column("last 32 windows", no_wrap=True, min_width=32)
    qbers = [h.get("qber") for h in hist]
    rows = [
        ("QBER (worse basis)", _pct(last.get("qber")), qbers),
        ("QBER Z", _pct(last.get("qber_z")), [h.get("qber_z") for h in hist]),
        ("QBER X", _pct(last.get("qber_x")), [h.get("qber_x") for h in hist]),
        (
            "sifted rate",
            _with_unit(last.get("sifted_rate_hz"), "Hz"),
            [h.get("sifted_rate_hz") for h in hist],
        ),
        (
            "secure key rate",
            _with_unit(last.get("secure_rate_bps"), "bit/s"),
            [h.get("secure_rate_bps") for h in hist],
        ),
    ]
    for name, now, series in rows:
        rates.add_row(name, now, Text(sparkline(series, 32), style="cyan"))
    singles = last.get("singles_rate_hz") or []
    lines = [head]
    if cap:
        lines.append(Text(cap, style="yellow"))
    lines.append(rates)
    if singles:
        kcps = " ".join(f"{s / 1e3:.0f}" for s in singles)
        lines.append(Text(f"singles per channel [kcps]: {kcps}", overflow="ellipsis", no_wrap=True))
    devices = status.get("devices") or {}
    ready = [n for n, st in devices.items() if st == "ready"]
    dev = Text(f"devices: {len(ready)} ready")
    for name, state in devices.items():
        if state != "ready":
            dev.append(f"; {name} {state}", style="red" if state == "faulted" else "yellow")
    lines.append(dev)
    active = status.get("interlocks_active") or []
    lines.append(
        Text(
            "interlocks: " + (", ".join(active) + " TRIPPED" if active else "none active"),
            style="red" if active else "",
        )
    )
    for e in (status.get("events") or [])[-5:]:
        t = time.strftime("%H:%M:%S", time.localtime(e.get("time_s", 0)))
        style = "red" if e.get("kind") == "interlock" else ""
        lines.append(
            Text(
                f"{t} {e.get('kind')}: {e.get('text')}",
                style=style,
                overflow="ellipsis",
                no_wrap=True,
            )
        )
    return Panel(Group(*lines), title=title or "qnet status")
