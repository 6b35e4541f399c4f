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


def qkd_link_line(link: dict[str, Any] | None) -> str:
    """One line on the QKD link engine ("" when the node runs none).

    ``qkd link sender running, lock locked (+0.300000 s, +40.00 ppm), QBER Z 2.05 % X 2.10 %,
    sifted 9.00 k bit/s, secret 2.05 k bit/s, f 1.03, blocks 3 stored / 0 discarded``
    """
    if not link:
        return ""
    parts = [f"qkd link {link.get('role')} {link.get('state')}"]
    lock = link.get("lock_state")
    if lock and lock != "n/a":
        off, ppm = link.get("offset_ps"), link.get("ppm")
        where = f" ({off / 1e12:+.6f} s, {ppm:+.2f} ppm)" if off is not None and ppm else ""
        parts.append(f"lock {lock}{where}")
    parts.append(f"QBER Z {_pct(link.get('qber_z'))} X {_pct(link.get('qber_x'))}")
    parts.append(f"sifted {_fmt_rate(link.get('sifted_rate_bps'))}bit/s")
    parts.append(f"secret {_fmt_rate(link.get('secret_rate_bps'))}bit/s")
    f = link.get("ec_efficiency")
    parts.append(f"f {f:.3f}" if f is not None else "f -")
    stored, dropped = link.get("blocks_stored", 0), link.get("blocks_discarded", 0)
    parts.append(f"blocks {stored} stored / {dropped} discarded")
    if link.get("channel_connected") is False:
        parts.append("channel DOWN")
    if link.get("error"):
        parts.append(f"error: {link['error']}")
    return ", ".join(parts)


def render(status: dict[str, Any], title: str = "") -> Any:
    """A rich renderable of one ``daemon.status`` snapshot."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    hist = status.get("history") or []
    last = status.get("last_window") or {}
    head = Table.grid(padding=(0, 2))
    head.add_row(
        f"node [bold]{status.get('node')}[/bold]",
        f"link {status.get('link')}",
        f"acquisition {status.get('acquisition')}",
        f"windows {status.get('windows')}",
        f"uptime {status.get('uptime_s', 0):.0f} s",
    )
    key = "[red]PAUSED[/red]" if status.get("key_paused") else "[green]running[/green]"
    cal = status.get("calibration") or {}
    comp = status.get("compensation") or {}
    head.add_row(
        f"key {key}",
        f"calibration {cal.get('state')}",
        f"compensation {comp.get('state')}"
        + (f" (QBER {_pct(comp.get('qber'))})" if comp.get("qber") is not None else ""),
        "",
        "",
    )
    cap = capture_line(status.get("capture"))
    rates = Table(title="link", expand=True)
    rates.add_column("quantity", no_wrap=True)
    rates.add_column("now")
    rates.add_column("history (last 32 windows)", no_wrap=True, min_width=32)
    qbers = [h.get("qber") for h in hist]
    rows = [
        ("QBER (worse basis)", _pct(last.get("qber")), qbers),
        ("QBER Z", _pct(last.get("qber_z")), [h.get("qber_z") for h in hist]),
        ("QBER X", _pct(last.get("qber_x")), [h.get("qber_x") for h in hist]),
        (
            "sifted rate",
            _fmt_rate(last.get("sifted_rate_hz")) + "Hz",
            [h.get("sifted_rate_hz") for h in hist],
        ),
        (
            "secure key rate",
            _fmt_rate(last.get("secure_rate_bps")) + "bit/s",
            [h.get("secure_rate_bps") for h in hist],
        ),
    ]
    for name, now, series in rows:
        rates.add_row(name, now, Text(sparkline(series, 32), style="cyan"))
    singles = last.get("singles_rate_hz") or []
    rates.add_row("singles", ", ".join(_fmt_rate(s).strip() for s in singles) + " Hz", "")
    dev = Table(title="devices", expand=True)
    dev.add_column("device")
    dev.add_column("state")
    for name, state in (status.get("devices") or {}).items():
        style = "green" if state == "ready" else "red" if state == "faulted" else "yellow"
        dev.add_row(name, f"[{style}]{state}[/{style}]")
    active = status.get("interlocks_active") or []
    ev = Table(title="interlocks: " + (", ".join(active) if active else "none active"), expand=True)
    ev.add_column("time")
    ev.add_column("event", overflow="fold")
    for e in (status.get("events") or [])[-8:]:
        t = time.strftime("%H:%M:%S", time.localtime(e.get("time_s", 0)))
        style = "red" if e.get("kind") == "interlock" else ""
        ev.add_row(t, Text(f"{e.get('kind')}: {e.get('text')}", style=style))
    parts = [head, Text(cap, style="yellow")] if cap else [head]
    if ql := qkd_link_line(status.get("qkd_link")):
        parts.append(Text(ql, style="cyan"))
    return Panel(Group(*parts, rates, dev, ev), title=title or "qnet status")
