from rich.console import Console

from controller.status_view import render, sparkline


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
