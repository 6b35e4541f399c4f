"""The command server in-process: what reaches ``execute``, rate limits, refusals, the log."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from controller.command_server import CommandServer
from controller.commands import (
    CommandSettings,
    PermissionsConfig,
    ValidRequest,
    sign_request,
    surface_for,
)
from controller.supervisor import DeviceBusy
from drivers import DRIVERS

LIMITS = {"current_setpoint_a": (0.0, 0.1)}


def _server(settings: CommandSettings | None = None, perms: PermissionsConfig | None = None):
    calls: list[ValidRequest] = []

    async def execute(v: ValidRequest) -> Any:
        calls.append(v)
        return {"value": v.value}

    surfaces = {"pump_laser": surface_for("pump_laser", DRIVERS["thorlabs_cld1015"], LIMITS)}
    srv = CommandServer(
        "alice",
        None,
        settings or CommandSettings(),
        perms or PermissionsConfig(default_role="operator"),
        surfaces,
        execute,
        lambda *a: None,
    )
    return srv, calls


MALFORMED = [
    b"\xff\xfe",
    b"{" * 40,
    b"[]",
    b'{"device": "pump_laser", "setting": "laser_on", "value": true}',
    b'{"id": 1, "device": "pump_laser", "setting": "current_setpoint_a", "value": 0.2}',
    b'{"id": 1, "device": "pump_laser", "setting": "current_setpoint_a", "value": "0.05"}',
    b'{"id": 1, "device": "pump_laser", "setting": "current_setpoint_a", "value": NaN}',
    b'{"id": 1, "device": "pump_laser", "setting": "current_setpoint_a", "value": 1'
    + b"0" * 400
    + b"}",
    b'{"id": 1, "device": "laser", "action": "explode"}',
    b'{"id": 1, "device": "pump_laser", "setting": "laser_on", "value": 1, "extra": 1}',
]


def test_malformed_requests_never_reach_execute():
    srv, calls = _server()

    async def main() -> list[dict[str, Any]]:
        return [json.loads(await srv.handle_payload(p)) for p in MALFORMED]

    replies = asyncio.run(main())
    assert calls == []
    assert all(not r["ok"] for r in replies)
    assert srv.refused == len(MALFORMED) and srv.handled == 0
    assert replies[7]["id"] == 1 and replies[7]["error"]["code"] == "bad_value", replies[7]


def test_rate_limit_per_user_and_busy_devices():
    srv, calls = _server(CommandSettings(rate_per_user_hz=0.001, burst=3))
    body = {"device": "pump_laser", "setting": "current_setpoint_a", "value": 0.05}

    async def main() -> list[dict[str, Any]]:
        return [
            json.loads(await srv.handle_payload(json.dumps({"id": k, **body}))) for k in range(5)
        ]

    replies = asyncio.run(main())
    assert [r["ok"] for r in replies] == [True, True, True, False, False]
    err = replies[3]["error"]
    assert err["code"] == "rate_limited" and "anonymous" in err["message"], err
    assert len(calls) == 3
    assert srv.counters()["codes"] == {"rate_limited": 2}

    async def busy(v: ValidRequest) -> Any:
        raise DeviceBusy("pump_laser already has 16 commands waiting")

    srv2, _ = _server()
    srv2.execute = busy
    r = json.loads(asyncio.run(srv2.handle_payload(json.dumps({"id": 9, **body}))))
    assert r["error"]["code"] == "busy" and "16 commands waiting" in r["error"]["message"]


def test_one_info_line_per_request_without_secrets(caplog, monkeypatch):
    monkeypatch.setenv("QNET_T_SECRET", "very-secret-key")
    perms = PermissionsConfig.model_validate(
        {
            "default_role": "none",
            "users": {"op": {"role": "operator", "token": {"env": "QNET_T_SECRET"}}},
        }
    )
    srv, _ = _server(perms=perms)
    caplog.set_level(logging.INFO, logger="qnet.commands")
    body = {"id": "a1", "user": "op", "device": "pump_laser", "setting": "current_setpoint_a"}
    signed = sign_request("alice", {**body, "value": 0.05}, "very-secret-key")

    async def main() -> None:
        await srv.handle_payload(json.dumps(signed))
        await srv.handle_payload(json.dumps({**signed, "value": 0.06}))  # altered

    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if r.name == "qnet.commands"]
    assert len(lines) == 2, lines
    assert "user op" in lines[0] and "pump_laser.current_setpoint_a" in lines[0]
    assert "0.05" in lines[0] and lines[0].endswith(": ok"), lines[0]
    assert "refused (bad_signature)" in lines[1] and "0.06" in lines[1], lines[1]
    text = "\n".join(lines)
    assert "very-secret-key" not in text and signed["sig"] not in text


@pytest.mark.parametrize("n", [200])
def test_repeated_refusals_are_summarised_in_the_log(caplog, n):
    srv, _ = _server()
    caplog.set_level(logging.INFO, logger="qnet.commands")

    async def main() -> None:
        for _ in range(n):
            await srv.handle_payload(b"{not json")

    asyncio.run(main())
    lines = [r for r in caplog.records if r.name == "qnet.commands"]
    assert len(lines) <= 10, len(lines)
    assert srv.refused == n


def test_run_check_refuses_an_unreadable_user_secret(tmp_path):
    from pathlib import Path

    import yaml
    from typer.testing import CliRunner

    from controller.cli import app

    configs = Path(__file__).resolve().parents[2] / "configs"
    raw = yaml.safe_load((configs / "sim-daemon.yaml").read_text())
    raw["daemon"]["permissions"]["users"] = {
        "admin": {"role": "admin", "token": {"file": str(tmp_path / "missing.token")}}
    }
    (tmp_path / "sim-node.yaml").write_text((configs / "sim-node.yaml").read_text())
    p = tmp_path / "d.yaml"
    p.write_text(yaml.safe_dump(raw))
    r = CliRunner().invoke(app, ["run", "--check", str(p)])
    assert r.exit_code == 2, r.output
    assert "daemon.permissions.users.admin.token" in r.output and "missing.token" in r.output
    (tmp_path / "missing.token").write_text("s3cret-admin\n")
    r = CliRunner().invoke(app, ["run", "--check", str(p)])
    assert r.exit_code == 0, r.output
    assert "s3cret-admin" not in r.output


def test_set_takes_a_negative_value():
    from pathlib import Path

    from typer.testing import CliRunner

    from controller.cli import app
    from controller.simnode import free_port

    sim = str(Path(__file__).resolve().parents[2] / "configs" / "sim-daemon.yaml")
    args = ["set", sim, "pump_laser", "current_setpoint_a", "-0.01"]
    r = CliRunner().invoke(app, [*args, "--broker", f"127.0.0.1:{free_port()}", "--timeout", "1"])
    assert "No such option" not in r.output, r.output
    assert r.exit_code == 1 and "unreachable" in r.output, r.output


def test_listener_falls_back_to_mqtt_311_on_a_broker_without_mqtt_5(caplog):
    """The demo's embedded amqtt speaks only MQTT 3.1.1: requests are still answered."""
    from controller._remote import request
    from controller.demo import _start_amqtt
    from controller.simnode import free_port
    from telemetry import BrokerSettings

    caplog.set_level(logging.WARNING, logger="qnet.commands")

    async def main() -> dict[str, Any]:
        port = free_port()
        broker = await _start_amqtt(port)
        srv, _ = _server()
        srv.broker = BrokerSettings(host="127.0.0.1", port=port, client_id="cmd-311")
        task = asyncio.create_task(srv.run())
        try:
            for _ in range(100):
                if "MQTT 5" in caplog.text:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            client = BrokerSettings(host="127.0.0.1", port=port, client_id="asker")
            body = {"device": "pump_laser", "setting": "current_setpoint_a"}
            return await request(client, "alice", body, 10)
        finally:
            task.cancel()
            await broker.shutdown()

    reply = asyncio.run(main())
    assert reply["ok"], reply
    assert "does not speak MQTT 5" in caplog.text
