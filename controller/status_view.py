"""The live terminal view of a node (``qnet status``, the demo), from ``daemon.status``."""

from __future__ import annotations

import math
import time
from typing import Any

_SPARK = "▁▂▃▄▅▆▇█"
#: Windows shown in each sparkline (fits an 80-column terminal with its scale).
HISTORY_POINTS = 24


def spark_scale(
    values: list[float | None], width: int = 40, at_least: float | None = None
) -> tuple[float, float] | None:
    """The fixed scale of a sparkline: 0 to the largest of the values and ``at_least``.

    The scale starts lower only for negative values; ``at_least`` is e.g. an interlock
    threshold; None without data.

    Starting at 0 keeps a QBER moving from 1.5 to 2.7 % a small step, not a rise from
    the bottom to full height; including the threshold shows how far below it the link is.
    """
    finite = [v for v in values[-width:] if v is not None and math.isfinite(v)]
    if not finite:
        return None
    lo = min(0.0, *finite)
    hi = max(finite)
    if at_least is not None and math.isfinite(at_least):
        hi = max(hi, at_least)
    return lo, hi


def sparkline(
    values: list[float | None], width: int = 40, scale: tuple[float, float] | None = None
) -> str:
    """A one-line chart of the last ``width`` values on ``scale`` (default :func:`spark_scale`).

    Missing values are gaps; values outside the scale are clipped to its ends.
    """
    vals = values[-width:]
    scale = scale or spark_scale(vals, width)
    if scale is None:
        return ""
    lo, hi = scale
    span = hi - lo or 1.0
    top = len(_SPARK) - 1
    out = []
    for v in vals:
        if v is None or not math.isfinite(v):
            out.append(" ")
        else:
            out.append(_SPARK[max(0, min(top, round((v - lo) / span * top)))])
    return "".join(out)


def describe_value(value: Any) -> str:
    """A value as an operator reads it: true/false/none, numbers with 4 digits, k=v lists."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={describe_value(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(describe_value(v) for v in value) + "]"
    return str(value)


def describe_request(body: dict[str, Any]) -> str:
    """``pump_laser.laser_on = false`` or ``snspd_bias.reset_latch()``: a request as text."""
    device = body.get("device", "?")
    if body.get("setting") is not None:
        return f"{device}.{body['setting']} = {describe_value(body.get('value'))}"
    arg = "" if body.get("value") is None else describe_value(body.get("value"))
    return f"{device}.{body.get('action')}({arg})"


def _fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.1f} "


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def scale_label(scale: tuple[float, float], unit: str) -> str:
    """A sparkline's scale, short: ``0-6 %``, ``0-13.6 kHz``, ``0-3 kbit/s``."""
    lo, hi = scale
    if unit == "%":
        return f"{100 * lo:.3g}-{100 * hi:.3g} %"
    prefix, div = "", 1.0
    for p, d in (("M", 1e6), ("k", 1e3)):
        if max(abs(lo), abs(hi)) >= d:
            prefix, div = p, d
            break
    return f"{lo / div:.3g}-{hi / div:.3g} {prefix}{unit}"


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


def render(
    status: dict[str, Any], title: str = "", thresholds: dict[str, float] | None = None
) -> Any:
    """A rich renderable of one ``daemon.status`` snapshot.

    ``thresholds`` (reading -> interlock trip level, e.g. ``{"qber": 0.11}``) extend the
    sparklines' fixed scale so a trip level is always on the chart; each scale is printed.
    """
    from rich import box
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
    rates = Table(title="link", expand=True, box=box.SIMPLE_HEAD, pad_edge=False)
    rates.add_column("quantity", no_wrap=True)
    rates.add_column("now", no_wrap=True)
    rates.add_column(f"last {HISTORY_POINTS} windows", min_width=HISTORY_POINTS)
    rates.add_column("scale", no_wrap=True)
    qber_max = (thresholds or {}).get("qber")
    rows = [
        ("QBER (worse basis)", _pct(last.get("qber")), "qber", qber_max, "%"),
        ("QBER Z", _pct(last.get("qber_z")), "qber_z", qber_max, "%"),
        ("QBER X", _pct(last.get("qber_x")), "qber_x", qber_max, "%"),
        (
            "sifted rate",
            _fmt_rate(last.get("sifted_rate_hz")) + "Hz",
            "sifted_rate_hz",
            None,
            "Hz",
        ),
        (
            "secure key rate",
            _fmt_rate(last.get("secure_rate_bps")) + "bit/s",
            "secure_rate_bps",
            None,
            "bit/s",
        ),
    ]
    for name, now, key, at_least, unit in rows:
        series = [h.get(key) for h in hist]
        scale = spark_scale(series, HISTORY_POINTS, at_least)
        label = "" if scale is None else scale_label(scale, unit)
        line = Text(sparkline(series, HISTORY_POINTS, scale), style="cyan")
        rates.add_row(name, now, line, label)
    singles = last.get("singles_rate_hz") or []
    if singles:
        text = ", ".join(scale_label((0.0, s), "Hz").split("-", 1)[1] for s in singles)
        rates.add_row("singles", "", text, "")
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
        text = e.get("text")
        text = describe_value(text) if not isinstance(text, str) else text
        ev.add_row(t, Text(f"{e.get('kind')}: {text}", style=style))
    parts = [head, Text(cap, style="yellow")] if cap else [head]
    if ql := qkd_link_line(status.get("qkd_link")):
        parts.append(Text(ql, style="cyan"))
    return Panel(Group(*parts, rates, dev, ev), title=title or "qnet status")
