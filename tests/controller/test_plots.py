"""The run-folder plots: what a reader needs is on them (axes, limits, title, markers)."""

from pathlib import Path

import numpy as np
import pytest

from coincidence import CorrelationHistogram, generate_pairs
from controller._plots import histogram_figure, periods, qber_keyrate_figure, save


def _history(start: float) -> list[dict]:
    """A 60 s run's windows: first window at 10 s, drift at 21 s, QBER up to 64 %."""
    out = []
    for k in range(10, 58):
        t = float(k)
        bad = 23 <= k < 40
        qz = 0.64 if k == 30 else (0.35 if bad else 0.012)
        qx = 0.001 if k == 12 else (0.30 if bad else 0.015)  # 0.1 %: below the axis
        out.append(
            {
                "time_s": start + t,
                "qber_z": qz,
                "qber_x": qx,
                "qber": max(qz, qx),
                "sifted_rate_hz": 25_000.0,
                "secure_rate_bps": 0.0 if bad else 13_000.0,
                "key_paused": bad,
            }
        )
    return out


def test_qber_keyrate_covers_the_run_and_marks_what_happened(tmp_path: Path) -> None:
    start = 1_796_398_000.0
    hist = _history(start)
    t = [h["time_s"] - start for h in hist]
    paused = periods(t, [h["key_paused"] for h in hist], 60.0)
    fig = qber_keyrate_figure(
        hist,
        start_s=start,
        duration_s=60.0,
        qber_trip=0.06,
        drift_at_s=21.0,
        paused=paused,
        compensating=[(24.0, 40.0)],
        title="qnet demo: QBER and key rate",
    )
    aq, asf, akey = fig.axes
    assert fig._suptitle.get_text() == "qnet demo: QBER and key rate"
    # time axis from the start of the run to its end (not from the first window)
    for ax in fig.axes:
        assert ax.get_xlim() == (0.0, 60.0)
    assert akey.get_xlabel() == "time since the start of the run [s]"
    # QBER on a log axis in %, covering 64 %, nothing clipped silently
    assert aq.get_yscale() == "log"
    lo, hi = aq.get_ylim()
    assert lo <= 1.2 and hi >= 64
    assert "QBER [%]" in aq.get_ylabel()
    labels = [ln.get_label() for ln in aq.get_lines()]
    assert "QBER X basis: below the axis" in labels  # the 0.1 % point is marked
    # the threshold and the drift marker at the right time
    thr = [ln for ln in aq.get_lines() if ln.get_label().startswith("QBER interlock trips")]
    assert thr and thr[0].get_ydata()[0] == pytest.approx(6.0)
    drift = [ln for ln in aq.get_lines() if ln.get_label() == "drift imposed"]
    assert drift and drift[0].get_xdata()[0] == 21.0
    # key paused and compensating shaded
    spans = {p.get_label() for p in aq.patches}
    assert {"key paused", "compensating"} <= spans
    assert paused == [(23.0, 40.0)]
    # the sifted rate in Hz, the key in bit/s, both limits covering the data
    assert asf.get_ylabel() == "sifted rate [Hz]"
    assert asf.get_ylim()[1] >= 25_000
    assert akey.get_ylabel() == "secure key rate [bit/s]"
    assert akey.get_ylim()[1] >= 13_000
    png = save(fig, tmp_path / "qber_keyrate.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_histogram_log_scale_window_and_pair_named(tmp_path: Path) -> None:
    batch = generate_pairs(
        duration_ps=200_000_000_000,
        pair_rate_hz=20_000.0,
        noise_rate_hz=5_000.0,
        n_channels=8,
        pair_channels=[(0, 4)],
        delays_ps=[0, 0, 0, 0, 3_000, 0, 0, 0],
        jitter_ps=50.0,
        seed=3,
    )
    h = CorrelationHistogram(0, 4, 20, 2000, 3_000)
    h.process(batch)
    rep = h.result()
    fig = histogram_figure(rep, window_ps=1000, pair="Alice H (ch 0) / Bob H (ch 4)")
    (ax,) = fig.axes
    assert ax.get_yscale() == "symlog"
    assert "20 ps bin" in ax.get_ylabel()
    assert "ps" in ax.get_xlabel()
    assert "Alice H (ch 0) / Bob H (ch 4)" in ax.get_title()
    assert ax.get_ylim()[1] >= int(np.max(rep.counts))
    assert ax.get_xlim() == (-2000.0, 2000.0)
    window = [p for p in ax.patches if "coincidence window" in str(p.get_label())]
    assert window
    x0, x1 = window[0].get_bbox().x0, window[0].get_bbox().x1
    assert (x0, x1) == (-500, 500)
    save(fig, tmp_path / "histogram.png")
    assert (tmp_path / "histogram.png").stat().st_size > 0


def test_periods_hold_until_the_next_sample() -> None:
    assert periods([0, 1, 2, 3, 4], [False, True, True, False, True], 9.0) == [(1, 3), (4, 9.0)]
    assert periods([], [], 5.0) == []
