"""Commands and telemetry against a real mosquitto running the shipped config and ACL.

A captured request can be neither replayed nor altered (per-message HMAC, timestamp and
nonce), a retained request is refused even the first time, users cannot read each
other's requests or replies, and a service user (telegraf) cannot inject telemetry that
the bridge writes to the database (nor can a node the bridge does not know).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from controller._daemon_config import load_daemon_config
from controller._remote import request
from controller.commands import sign_request
from controller.daemon import Daemon
from controller.testing import servers
from telemetry import BrokerSettings, command_topic, reply_topic

pytestmark = [pytest.mark.servers, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
NODE = "alice"
MQTT = {
    "alice": "pw-alice",
    "bob": "pw-bob",
    "operator": "pw-op",
    "operator2": "pw-op2",
    "telegraf": "pw-telegraf",
    "bridge": "pw-bridge",
}
SECRET = "hmac-secret-of-op"


@pytest.fixture
def shipped_broker(tmp_path):
    """mosquitto from configs/mosquitto/mosquitto.conf with the shipped ACL (loopback port)."""
    srv = servers.start_shipped_mosquitto(tmp_path, MQTT)
    yield srv
    srv.stop()


def _broker(port: int, user: str) -> BrokerSettings:
    var = f"QNET_T_MQTT_{user.upper()}"
    os.environ[var] = MQTT[user]
    return BrokerSettings.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "client_id": f"t-{user}-{uuid.uuid4().hex[:6]}",
            "username": user,
            "password": {"env": var},
        }
    )


def _daemon(tmp_path: Path, port: int, monkeypatch: pytest.MonkeyPatch) -> Daemon:
    monkeypatch.setenv("QNET_T_MQTT_ALICE", MQTT["alice"])
    monkeypatch.setenv("QNET_T_OP_SECRET", SECRET)
    raw = {
        "node": NODE,
        "instruments": {},
        "daemon": {
            "telemetry": {
                "broker": {
                    "host": "127.0.0.1",
                    "port": port,
                    "client_id": f"d-{uuid.uuid4().hex[:6]}",
                    "username": "alice",
                    "password": {"env": "QNET_T_MQTT_ALICE"},
                },
                "outbox": {"path": str(tmp_path / "outbox.sqlite")},
            },
            "permissions": {
                "default_role": "none",
                "users": {"op": {"role": "operator", "token": {"env": "QNET_T_OP_SECRET"}}},
            },
        },
    }
    p = tmp_path / "daemon.yaml"
    p.write_text(yaml.safe_dump(raw))
    return Daemon(load_daemon_config(p))


async def _until(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class _Peer:
    """An MQTT client as one user: publishes raw requests, collects what it may read."""

    def __init__(self, port: int, user: str, subscribe: tuple[str, ...]) -> None:
        self.b = _broker(port, user)
        self.user = user
        self.subscribe = subscribe
        self.got: list[tuple[str, dict[str, Any]]] = []

    async def __aenter__(self) -> _Peer:
        self.client = aiomqtt.Client(
            "127.0.0.1",
            self.b.port,
            identifier=self.b.client_id,
            username=self.user,
            password=MQTT[self.user],
        )
        await self.client.__aenter__()
        for t in self.subscribe:
            await self.client.subscribe(t, qos=1)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for msg in self.client.messages:
            try:
                body = json.loads(msg.payload)
            except ValueError:
                body = {"raw": bytes(msg.payload).decode(errors="replace")}
            self.got.append((str(msg.topic), body))

    async def __aexit__(self, *exc: object) -> None:
        self._reader.cancel()
        await self.client.__aexit__(None, None, None)

    async def send(self, rid: str, body: dict[str, Any], retain: bool = False) -> None:
        topic = command_topic(NODE, f"{self.user}/{rid}")
        await self.client.publish(topic, json.dumps(body), qos=1, retain=retain)

    async def reply(self, rid: str, timeout_s: float = 10.0) -> dict[str, Any]:
        topic = reply_topic(NODE, f"{self.user}/{rid}")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for t, body in self.got:
                if t == topic:
                    self.got.remove((t, body))
                    return body
            await asyncio.sleep(0.02)
        raise AssertionError(f"no reply on {topic}")


def test_captured_requests_cannot_be_replayed_altered_or_read(
    tmp_path, monkeypatch, shipped_broker
):
    port = shipped_broker.port

    async def main() -> None:
        d = _daemon(tmp_path, port, monkeypatch)
        await d.start()
        try:
            await _until(
                lambda: any("subscribed" in e["text"] for e in d.events), 15, "the listener"
            )
            # what `qnet` does (signed, on the operator's own topics): accepted
            op = _broker(port, "operator")
            r = await request(
                op, NODE, {"user": "op", "token": SECRET, "device": "daemon", "action": "status"}
            )
            assert r["ok"], r
            # another MQTT user subscribed to everything sees none of the operator's traffic
            async with (
                _Peer(port, "operator2", ("qnet/v1/#",)) as spy,
                _Peer(port, "operator", (reply_topic(NODE, "operator/#"),)) as me,
            ):
                body = {"id": "p1", "user": "op", "device": "daemon", "action": "pause_key"}
                captured = sign_request(NODE, body, SECRET)
                await me.send("p1", captured)
                r = await me.reply("p1")
                assert r["ok"] and d.key_paused is True, r
                # the same bytes again: replayed, nothing executed
                d.key_paused = False
                await me.send("p1b", captured)
                r = await me.reply("p1b")
                assert r["error"]["code"] == "replayed", r
                assert d.key_paused is False
                # altered (another action under the same signature): bad signature
                fresh = sign_request(NODE, body, SECRET)
                await me.send("p2", {**fresh, "action": "resume_key"})
                r = await me.reply("p2")
                assert r["error"]["code"] == "bad_signature", r
                # a retained request, published while the daemon listens: refused at once
                await me.send("p3", sign_request(NODE, {**body, "id": "p3"}, SECRET), retain=True)
                r = await me.reply("p3")
                assert r["error"]["code"] == "bad_request", r
                assert "retained" in r["error"]["message"]
                assert d.key_paused is False
                await me.client.publish(command_topic(NODE, "operator/p3"), b"", retain=True)
                # operator2 may not publish as the operator, nor read its requests/replies
                await spy.client.publish(
                    command_topic(NODE, "operator/x"), json.dumps(fresh), qos=1
                )
                await asyncio.sleep(0.5)
                assert spy.got == [], spy.got
            codes = d.commands.counters()["codes"]
            assert codes.get("replayed") == 1 and codes.get("bad_signature") == 1, codes
        finally:
            await d.shutdown()

    asyncio.run(main())


def test_service_users_cannot_forge_node_telemetry(tmp_path, shipped_broker, caplog):
    """telegraf cannot publish telemetry at all; the bridge drops nodes it does not know."""
    import paho.mqtt.client as mqtt

    from telemetry import Bridge, BridgeSettings, key_rate, to_line

    servers.require("victoria-metrics")
    vm = servers.start_victoria_metrics(tmp_path / "vm")
    port = shipped_broker.port
    os.environ["QNET_T_MQTT_BRIDGE"] = MQTT["bridge"]
    bridge = Bridge(
        BridgeSettings.model_validate(
            {
                "broker": {
                    "port": port,
                    "client_id": "bridge-forge",
                    "username": "bridge",
                    "password": {"env": "QNET_T_MQTT_BRIDGE"},
                },
                "influx": {"url": vm.url},
                "spool": {"path": str(tmp_path / "spool.db")},
                "nodes": ["alice"],
            }
        )
    )
    t0 = 1_700_000_000_000_000_000

    def publish(user: str, node: str, k: int) -> None:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"forge-{user}-{k}")
        c.username_pw_set(user, MQTT[user])
        c.connect("127.0.0.1", port)
        c.loop_start()
        rec = key_rate(
            node=node,
            link="alice-bob",
            sifted_bps=1.0,
            secure_bps=88888.0 + k,
            time_ns=t0 + k * 10**6,
        )
        c.publish(f"qnet/v1/{node}/telemetry/key_rate", to_line(rec), qos=1).wait_for_publish(5)
        c.loop_stop()
        c.disconnect()

    bridge.start()
    try:
        assert bridge.connected.wait(10)
        publish("telegraf", "telegraf", 1)  # the ACL refuses it: nobody receives it
        publish("bob", "bob", 2)  # a real node, but not one this bridge serves
        publish("bob", "bob", 3)
        publish("alice", "alice", 4)  # the marker: written
        deadline = time.monotonic() + 20
        series: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            series = servers.vm_export(vm, '{__name__="key_rate_secure_bps"}')
            if series:
                break
            time.sleep(0.3)
        nodes = sorted(s["metric"]["node"] for s in series)
        assert nodes == ["alice"], series
        assert bridge.stats.unknown_node_messages == 2, bridge.stats
        assert bridge.stats.messages_received == 3, bridge.stats  # telegraf's never arrived
        lines = [r.message for r in caplog.records if "unknown node" in r.message]
        assert len(lines) == 1 and "'bob'" in lines[0], lines
    finally:
        bridge.stop()
        vm.stop()
