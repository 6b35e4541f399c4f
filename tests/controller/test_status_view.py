from rich.console import Console

from controller.status_view import capture_line, render, sparkline


def test_sparkline_scales_and_marks_gaps():
    s = sparkline([0.0, None, 1.0, float("nan"), 0.5], 10)
    assert len(s) == 5
    assert s[0] == "▁" and s[2] == "█" and s[1] == " " and s[3] == " "
    assert sparkline([None, None]) == ""
    assert len(sparkline(list(range(100)), 32)) == 32


def test_render_shows_the_key_facts():
    status = {
        "node": "n1",
        "link": "l",
        "key_paused": True,
        "calibration": {"state": "done"},
        "compensation": {"state": "running"},
        "devices": {"laser": "ready", "spad": "faulted"},
        "interlocks_active": ["qber"],
        "last_window": {"qber": 0.1234, "secure_rate_bps": 0.0, "singles_rate_hz": [1e6]},
        "history": [{"qber": 0.01}, {"qber": 0.1234}],
        "events": [{"time_s": 0, "kind": "interlock", "text": "qber trip: high"}],
    }
    console = Console(width=120, record=True)
    console.print(render(status, "t"))
    text = console.export_text()
    for needle in ("n1", "PAUSED", "12.34 %", "faulted", "qber trip: high", "interlocks: qber"):
        assert needle in text, needle


def _text(status):
    console = Console(width=120, record=True)
    console.print(render(status, "t"))
    return console.export_text()


def test_render_shows_a_running_capture():
    # e.g. `qnet calibrate` collecting 1 s of raw tags: visible while it runs
    status = {"node": "n1", "capture": {"collected_s": 0.4, "duration_s": 1.0}}
    text = _text(status)
    assert "capture [########............] 0.4 / 1.0 s" in text
    assert "capture" not in _text({"node": "n1", "capture": None})


def test_capture_line_clamps_and_handles_idle():
    assert capture_line(None) == ""
    assert capture_line({"collected_s": 2.5, "duration_s": 2.0}, 4) == "capture [####] 2.5 / 2.0 s"
    assert capture_line({"collected_s": 0.0, "duration_s": 0.0}, 4) == "capture [....] 0.0 / 0.0 s"
