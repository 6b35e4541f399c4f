"""The full demo, short and without the drift: embedded amqtt broker, testbed, daemon, outputs."""

import asyncio
import json

import pytest

from controller.demo import run_demo

pytestmark = pytest.mark.slow


def test_short_demo_writes_summary_and_plots(tmp_path):
    code, out, summary = asyncio.run(run_demo(12.0, 1000.0, None, tmp_path, live=False))
    assert code == 0, summary
    assert summary["calibration"] == "done"
    assert summary["broker"] == "embedded amqtt"
    assert summary["final_qber"] < 0.05
    assert summary["shutdown"]["elapsed_s"] < 5
    for name in ("summary.json", "history.json", "histogram.png", "qber_keyrate.png", "daemon.log"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "summary.json").read_text())
    assert saved["windows"] >= 5
    # no drift in this run: the drift stages are skipped, the others met
    assert saved["verdict"]["pass"]
    assert [st["ok"] for st in saved["verdict"]["stages"]] == [True, True, None, None, None]
    assert summary["delay_error_ps"] <= 100
    log = (out / "daemon.log").read_text()
    assert "started node sim-node" in log and "calibration done: delays" in log
    assert "password-file" not in log
