"""qnet status: sparklines on a fixed, printed scale; events as readable text; run folders."""

import re
from datetime import UTC, datetime

from rich.console import Console

from controller._runs import new_run_dir
from controller.status_view import (
    describe_request,
    render,
    spark_scale,
    sparkline,
)


def test_a_small_qber_rise_stays_small_on_the_threshold_scale():
    qber = [0.015, 0.018, 0.022, 0.027]  # 1.5 to 2.7 %
    scale = spark_scale(qber, 32, at_least=0.11)
    assert scale == (0.0, 0.11)
    line = sparkline(qber, 32, scale)
    assert set(line) <= set("▁▂▃"), line  # far below the trip level, not full height
    # without a threshold the scale still starts at 0: 1.5 % is over half of 2.7 %
    assert sparkline(qber, 32)[0] not in "▁▂▃"


def test_render_prints_each_scale_and_readable_events():
    status = {
        "node": "n1",
        "last_window": {"qber": 0.027, "sifted_rate_hz": 1200.0},
        "history": [{"qber": 0.015, "sifted_rate_hz": 1000.0}, {"qber": 0.027}],
        "events": [
            {"time_s": 0, "kind": "action", "text": {"device": "pump_laser", "ok": True}},
        ],
    }
    console = Console(width=80, record=True)
    console.print(render(status, "t", {"qber": 0.11}))
    text = console.export_text()
    assert "0-11 %" in text, text
    assert "0-1 kHz" in text, text
    assert "{" not in text and "device=pump_laser, ok=true" in text, text


def test_actions_are_described_as_text():
    assert describe_request({"device": "laser", "setting": "laser_on", "value": False}) == (
        "laser.laser_on = false"
    )
    assert describe_request({"device": "smu", "action": "reset_latch"}) == "smu.reset_latch()"


def test_run_folders_share_one_utc_stamp_format(tmp_path):
    when = datetime(2026, 12, 4, 16, 57, 0, tzinfo=UTC)
    a = new_run_dir(tmp_path, "demo", when)
    b = new_run_dir(tmp_path, "demo", when)
    assert a.name == "demo-20261204T165700Z" and b.name == "demo-20261204T165700Z-2"
    assert a.is_dir() and b.is_dir()
    assert re.fullmatch(r"sample-\d{8}T\d{6}Z", new_run_dir(tmp_path, "sample").name)


def test_daemon_action_events_are_text_not_dicts():
    import asyncio
    from pathlib import Path

    from controller._daemon_config import load_daemon_config
    from controller.daemon import Daemon
    from controller.interlocks import ActionSpec

    cfg = load_daemon_config(Path(__file__).resolve().parents[2] / "configs" / "sim-daemon.yaml")
    daemon = Daemon(cfg)
    try:

        async def execute(vreq, *args, **kwargs):
            return {"value": False}

        daemon.execute = execute
        action = ActionSpec(device="pump_laser", setting="laser_on", value=False)
        asyncio.run(daemon._run_action("qber", action))
        text = daemon.events[-1]["text"]
        assert text == "qber: pump_laser.laser_on = false -> value=false", text
    finally:
        for w in daemon.workers.values():
            w.executor.shutdown()


def test_status_takes_the_qber_trip_level_from_the_config(tmp_path):
    from pathlib import Path

    from controller._cli_status import interlock_thresholds

    sim = Path(__file__).resolve().parents[2] / "configs" / "sim-daemon.yaml"
    levels = interlock_thresholds(sim)
    assert 0.0 < levels["qber"] < 0.5, levels
    assert interlock_thresholds(tmp_path / "missing.yaml") == {}
