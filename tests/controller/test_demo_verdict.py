"""The demo's verdict and screen lines, judged from summaries (no run needed)."""

from typer.testing import CliRunner

from controller.cli import app
from controller.demo import WIDTH, Stage, status_line, verdict, verdict_lines


def _summary(**over):
    s = {
        "duration_s": 60.0,
        "calibration": "done",
        "calibrated_at_s": 4.5,
        "delay_error_ps": 18,
        "qber_trip": 0.06,
        "qber_z_before": 0.0121,
        "qber_x_before": 0.0122,
        "qber_before_drift": 0.0122,
        "drift_at_s": 21.2,
        "tripped_after_s": 2.5,
        "trip_reading": 0.3395,
        "compensation": {"state": "converged", "qber": 0.0197, "evaluations": 66},
        "compensation_target": 0.02,
        "compensation_took_s": 24.0,
        "key_rate_before_bps": 13_980.0,
        "key_rate_final_bps": 12_280.0,
        "final_qber": 0.0155,
    }
    s.update(over)
    return s


def test_a_good_run_passes_every_stage_with_figures_for_people(tmp_path):
    stages = verdict(_summary())
    assert [st.name for st in stages] == [
        "delays found",
        "QBER before drift",
        "interlock tripped",
        "compensation recovered",
        "key rate restored",
    ]
    assert all(st.ok for st in stages)
    lines = verdict_lines(stages, tmp_path / "runs" / "20261204T165414Z")
    text = "\n".join(lines)
    assert lines[1].startswith("PASS")
    assert "1.22 % mean; Z 1.21 %, X 1.22 %" in text  # % with 2 decimals, labelled
    assert "< 6.00 % trip" in text and "< 2.00 % goal" in text
    assert "12.28 kbit/s" in text and "13.98 kbit/s" in text
    assert "2.5 s after drift, at 33.95 %" in text
    assert all(len(line) <= WIDTH for line in lines)


def test_the_30_s_case_fails_saying_why_and_what_to_try(tmp_path):
    # what `--duration 30` produced before: compensation still running, final QBER 27 %
    s = _summary(
        duration_s=30.0,
        drift_at_s=10.5,
        compensation={"state": "running"},
        key_rate_final_bps=0.0,
        final_qber=0.272,
    )
    stages = verdict(s)
    failed = {st.name: st for st in stages if st.ok is False}
    assert set(failed) == {"compensation recovered", "key rate restored"}
    assert "try --duration 90" in failed["compensation recovered"].why
    lines = verdict_lines(stages, tmp_path)
    assert lines[1].startswith("FAIL (2 of 5 stages)")
    assert any("why (compensation recovered)" in line for line in lines)
    assert all(len(line) <= WIDTH for line in lines)


def test_no_drift_skips_the_drift_stages():
    stages = verdict(_summary(drift_at_s=None))
    assert [st.ok for st in stages] == [True, True, None, None, None]
    assert stages[1].name == "QBER"


def test_failed_calibration_names_its_error():
    st = verdict(_summary(calibration="failed", delay_error_ps=None, calibration_error="no light"))
    assert st[0].ok is False and "no light" in st[0].why


def test_too_short_a_run_is_refused_with_the_minimum():
    res = CliRunner().invoke(app, ["demo", "--duration", "30"])
    assert res.exit_code == 2
    out = " ".join(res.output.split())
    assert "at least 45 s" in out


def test_status_lines_fit_80_columns():
    status = {
        "calibration": {"state": "running"},
        "compensation": {"state": "converged"},
        "key_paused": False,
        "last_window": {"qber_z": 0.5556, "qber_x": 0.4783, "secure_rate_bps": 1.2345e6},
    }
    line = status_line(59.9, status)
    assert len(line) <= WIDTH
    assert "QBER Z 55.56 %" in line and "1.23 Mbit/s" in line
    assert isinstance(Stage("x", "y", "z", True), Stage)


def test_live_view_fits_an_80_by_24_terminal():
    from rich.console import Console

    from controller.status_view import render

    hist = [
        {"qber": 0.012, "qber_z": 0.011, "qber_x": 0.013, "sifted_rate_hz": 3.5e4}
        for _ in range(60)
    ]
    status = {
        "node": "sim-node",
        "link": "alice-bob",
        "acquisition": "running",
        "windows": 55,
        "uptime_s": 55.0,
        "calibration": {"state": "done"},
        "compensation": {"state": "running", "qber": 0.0312},
        "devices": {f"device_{k}": "ready" for k in range(7)},
        "interlocks_active": [],
        "last_window": {**hist[-1], "singles_rate_hz": [1.55e5] * 4 + [4.3e4] * 4},
        "history": hist,
        "events": [{"time_s": 0, "kind": "calibration", "text": "delays " + "9793424, " * 8}] * 8,
        "capture": {"collected_s": 0.2, "duration_s": 0.3},
    }
    console = Console(width=WIDTH, record=True)
    console.print(render(status, "qnet demo  30 / 60 s"))
    lines = console.export_text().splitlines()
    assert len(lines) <= 24
    assert all(len(line) <= WIDTH for line in lines)
