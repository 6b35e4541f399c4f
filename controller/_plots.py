"""The plots qnet writes to run folders (the demo, ``qnet sample``), one function each.

Each function returns the matplotlib ``Figure`` (tests inspect its axes: labels,
limits, title) and :func:`save` writes it. Matplotlib is imported here with the
file-only ``Agg`` backend, so nothing needs a display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The QBER axis is logarithmic between these (fractions); points below are drawn
#: on the floor with a down-pointing marker, points above on the ceiling (up-pointing).
QBER_FLOOR = 0.002
QBER_CEILING = 1.0


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG at ``path`` and free it; returns ``path``."""
    plt = _pyplot()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def histogram_figure(
    hist: Any,
    *,
    window_ps: float,
    pair: str,
    a_label: str = "a",
    b_label: str = "b",
    title: str | None = None,
) -> Any:
    """A coincidence histogram (a ``HistogramReport``) on a log scale, the window shaded.

    Args:
        hist: ``CorrelationHistogram.result()`` (bin edges, counts, bin width, delay).
        window_ps: the coincidence window, full width, ps (shaded around 0).
        pair: the channel pair, e.g. ``"Alice H (ch 0) / Bob H (ch 4)"``.
        a_label: short name of the start channel (``"Alice H"``).
        b_label: short name of the stop channel (``"Bob H"``).
        title: defaults to the pair and the delay subtracted.
    """
    plt = _pyplot()
    centers = hist.bin_centers_ps
    counts = hist.counts
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.axvspan(
        -window_ps / 2,
        window_ps / 2,
        color="tab:orange",
        alpha=0.25,
        label=f"coincidence window ({window_ps:g} ps)",
    )
    ax.step(centers, counts, where="mid", color="tab:blue", label="coincidences")
    ax.set_yscale("symlog", linthresh=1)  # log above 1 count, linear (so 0 shows) below
    top = float(max(1, counts.max())) if counts.size else 1.0
    ax.set_ylim(0, top * 3)
    ax.set_xlim(float(hist.bin_edges_ps[0]), float(hist.bin_edges_ps[-1]))
    ax.set_xlabel(f"t({b_label}) - t({a_label}) - {hist.delay_ps} ps  [ps]")
    ax.set_ylabel(f"coincidences per {hist.bin_width_ps} ps bin (log)")
    ax.set_title(title or f"{pair}: coincidence histogram at delay {hist.delay_ps} ps")
    ax.legend(loc="upper right", fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _spans(
    ax: Any, periods: Sequence[tuple[float, float]], color: str, label: str, hatch: bool
) -> None:
    for k, (a, b) in enumerate(periods):
        name = label if k == 0 else None
        if hatch:
            ax.axvspan(a, b, fill=False, hatch="//", edgecolor=color, lw=0, label=name)
        else:
            ax.axvspan(a, b, color=color, alpha=0.12, lw=0, label=name)


def qber_keyrate_figure(
    history: Sequence[dict[str, Any]],
    *,
    start_s: float,
    duration_s: float,
    qber_trip: float | None = None,
    drift_at_s: float | None = None,
    paused: Sequence[tuple[float, float]] = (),
    compensating: Sequence[tuple[float, float]] = (),
    title: str = "QBER and key rate",
) -> Any:
    """QBER (log axis), sifted rate (Hz) and secure key rate (bit/s) over one run.

    Args:
        history: the daemon's window summaries (``time_s`` wall clock, ``qber_z``,
            ``qber_x``, ``qber`` (the worse basis), ``sifted_rate_hz``, ``secure_rate_bps``).
        start_s: wall-clock time of the run's start: the time axis is relative to it.
        duration_s: the run's length; the axis covers ``[0, duration_s]`` at least.
        qber_trip: the QBER interlock's threshold (a fraction), drawn as a line.
        drift_at_s: when the drift was imposed, s after the start (a marker).
        paused: ``(from, to)`` periods (s after the start) with the key paused, shaded red.
        compensating: periods with the compensation running, shaded yellow.
        title: the figure's title.
    """
    plt = _pyplot()
    t = [float(h["time_s"]) - start_s for h in history]

    def col(key: str) -> list[float]:
        out = []
        for h in history:
            v = h.get(key)
            out.append(float(v) if v is not None and math.isfinite(float(v)) else math.nan)
        return out

    fig, (aq, asf, akey) = plt.subplots(3, 1, figsize=(8, 7.5), sharex=True)
    for key, label, color in (
        ("qber_z", "QBER Z basis", "tab:blue"),
        ("qber_x", "QBER X basis", "tab:green"),
    ):
        q = col(key)
        inside = [
            100 * v if QBER_FLOOR <= v <= QBER_CEILING else math.nan for v in q
        ]  # a gap at a clipped point, the point itself marked below
        aq.plot(t, inside, color=color, label=label, marker=".", ms=3)
        lo = [(x, 100 * QBER_FLOOR) for x, v in zip(t, q, strict=True) if v < QBER_FLOOR]
        hi = [(x, 100 * QBER_CEILING) for x, v in zip(t, q, strict=True) if v > QBER_CEILING]
        for pts, marker, what in ((lo, "v", "below"), (hi, "^", "above")):
            if pts:
                xs, ys = zip(*pts, strict=True)
                aq.plot(
                    xs,
                    ys,
                    ls="none",
                    marker=marker,
                    color=color,
                    label=f"{label}: {what} the axis",
                )
    if qber_trip is not None:
        aq.axhline(
            100 * qber_trip,
            color="red",
            lw=1,
            label=f"QBER interlock trips above {100 * qber_trip:.2f} %",
        )
    aq.set_yscale("log")
    aq.set_ylim(100 * QBER_FLOOR, 100 * QBER_CEILING)
    aq.set_ylabel("QBER [%] (log)")
    sifted = col("sifted_rate_hz")
    asf.plot(t, sifted, color="tab:purple", label="sifted rate", marker=".", ms=3)
    asf.set_ylabel("sifted rate [Hz]")
    finite = [v for v in sifted if math.isfinite(v)]
    asf.set_ylim(0, max(finite, default=1.0) * 1.15 or 1.0)
    # no key is produced while it is paused (the telemetry reports 0 then, too)
    key = [
        0.0 if h.get("key_paused") else v
        for h, v in zip(history, col("secure_rate_bps"), strict=True)
    ]
    akey.plot(
        t, key, color="tab:orange", label="secure key rate (0 while paused)", marker=".", ms=3
    )
    akey.set_ylabel("secure key rate [bit/s]")
    finite = [v for v in key if math.isfinite(v)]
    akey.set_ylim(0, max(finite, default=1.0) * 1.15 or 1.0)
    akey.set_xlabel("time since the start of the run [s]")
    end = max([duration_s, *(x for x in t if math.isfinite(x))])
    for ax in (aq, asf, akey):
        _spans(ax, paused, "red", "key paused", hatch=False)
        _spans(ax, compensating, "darkgoldenrod", "compensating", hatch=True)
        if drift_at_s is not None:
            ax.axvline(drift_at_s, color="black", ls="--", lw=1, label="drift imposed")
        ax.set_xlim(0, end)
        ax.grid(alpha=0.3)
    # above the QBER panel, and at mid height in the others: where no data is drawn
    aq.legend(loc="lower left", bbox_to_anchor=(0.0, 1.02), fontsize="x-small", ncol=3)
    asf.legend(loc="center right", fontsize="x-small")
    akey.legend(loc="center left", fontsize="x-small")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def periods(
    times_s: Sequence[float], flags: Sequence[bool], end_s: float
) -> list[tuple[float, float]]:
    """The ``(from, to)`` stretches where ``flags`` is True (each sample holds until the next)."""
    out: list[tuple[float, float]] = []
    begin: float | None = None
    for t, on in zip(times_s, flags, strict=True):
        if on and begin is None:
            begin = t
        elif not on and begin is not None:
            out.append((begin, t))
            begin = None
    if begin is not None:
        out.append((begin, end_s))
    return out
