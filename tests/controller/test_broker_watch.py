"""A daemon started without its broker says so once, with how it retries, and when it is back."""

from __future__ import annotations

import asyncio
import logging

import pytest
import yaml

from controller._daemon_config import load_daemon_config
from controller.daemon import Daemon
from controller.testing import servers
from drivers.sim import free_port

pytestmark = pytest.mark.slow


def _config(tmp_path, port: int):
    raw = {
        "node": "lonely",
        "instruments": {},
        "daemon": {
            "telemetry": {
                "broker": {
                    "host": "127.0.0.1",
                    "port": port,
                    "client_id": "qnet-lonely",
                    "reconnect_min_s": 0.2,
                    "reconnect_max_s": 0.5,
                },
                "outbox": {"path": str(tmp_path / "outbox.sqlite")},
            }
        },
    }
    p = tmp_path / "d.yaml"
    p.write_text(yaml.safe_dump(raw))
    return load_daemon_config(p)


def test_broker_down_is_said_once_and_back_once(tmp_path, caplog):
    port = free_port()
    cfg = _config(tmp_path, port)

    async def main() -> None:
        d = Daemon(cfg)
        await d.start()
        try:
            await asyncio.sleep(6.0)  # ~20 reconnection attempts at 0.2-0.5 s
            mq = servers.start_mosquitto(tmp_path / "mq", port=port)
            try:
                deadline = asyncio.get_running_loop().time() + 30
                while "back after" not in caplog.text:
                    assert asyncio.get_running_loop().time() < deadline, caplog.text
                    await asyncio.sleep(0.2)
            finally:
                await d.shutdown()
                mq.stop()
        finally:
            if not d.stopped.is_set():
                await d.shutdown()

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    unreachable = [r for r in warnings if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1, [r.getMessage() for r in warnings]
    msg = unreachable[0].getMessage()
    assert f"broker 127.0.0.1:{port} unreachable" in msg and "retrying every 0.2 to 0.5 s" in msg
    assert not [r for r in warnings if "retry in" in r.getMessage()]
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("started node")]
    assert len(started) == 1 and f"broker 127.0.0.1:{port} not reached yet" in started[0]
    assert any(f"broker 127.0.0.1:{port} back after" in r.getMessage() for r in caplog.records)
