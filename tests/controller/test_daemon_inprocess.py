"""The daemon in-process on the testbed's in-process tag source (no instruments, no broker)."""

import asyncio
import json
from pathlib import Path

import yaml

from controller._daemon_config import load_daemon_config
from controller.daemon import Daemon

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_testbed_source_calibrates_and_answers_requests(tmp_path):
    raw = {
        "node": "bench-node",
        "instruments": {},
        "daemon": {
            "acquisition": {
                "source": {
                    "kind": "testbed",
                    "config": str(CONFIGS / "testbed.yaml"),
                    "speed": 1.0,
                    "serve": False,
                },
                "window_s": 0.5,
                "roles": {
                    "alice": {"H": 0, "V": 1, "D": 2, "A": 3},
                    "bob": {"H": 4, "V": 5, "D": 6, "A": 7},
                },
            },
            "calibration": {"capture_s": 0.5},
            "interlocks": {
                "qber": {
                    "reading": "qber",
                    "trip_above": 0.2,
                    "actions": [{"device": "daemon", "action": "pause_key"}],
                }
            },
        },
    }
    p = tmp_path / "d.yaml"
    p.write_text(yaml.safe_dump(raw))
    cfg = load_daemon_config(p)

    async def main():
        d = Daemon(cfg)
        await d.start()
        try:
            for _ in range(100):
                await asyncio.sleep(0.2)
                if d.calibration.get("state") == "done" and d.history and d.history[-1]["qber"]:
                    break
            assert d.calibration["state"] == "done", d.calibration
            r = await d.wait_window(5.0)
            assert r.link_qber(100) < 0.05
            assert r.secure_rate_bps > 0
            reply = json.loads(
                await d.handle_payload('{"id": 9, "device": "daemon", "action": "status"}')
            )
            assert reply["ok"] and reply["result"]["node"] == "bench-node"
            reply = json.loads(
                await d.handle_payload('{"id": 10, "device": "laser", "setting": "x"}')
            )
            assert reply["error"]["code"] == "unknown_device"
            assert not d.key_paused
        finally:
            report = await d.shutdown()
        assert report["elapsed_s"] < 5

    asyncio.run(main())
