"""Against a real mosquitto: the shipped config and ACL, birth/death status, secrets not logged."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from controller.testing import servers
from controller.testing.pipeline import REPO, publisher_settings, stored_seqs, stream_record
from telemetry import Bridge, BridgeSettings, Publisher, status_topic

pytestmark = [pytest.mark.servers]

USERS = {"alice": "pw-alice", "bob": "pw-bob", "operator": "pw-op", "bridge": "Sup3r-S3cret-pw"}


@pytest.fixture
def secure_broker(tmp_path):
    """mosquitto started from configs/mosquitto/mosquitto.conf (paths and port rewritten)."""
    srv = servers.start_shipped_mosquitto(tmp_path, USERS)
    yield srv
    srv.stop()


class Client:
    """A paho client that records what it receives."""

    def __init__(self, port, user=None, subscribe=()):
        self.got: list[tuple[str, bytes]] = []
        self.rc = None
        self.connected = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{user}-{id(self)}")
        if user:
            self.c.username_pw_set(user, USERS[user])
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, m.payload))

        def on_connect(c, u, f, rc, p):
            self.rc = rc
            if not rc.is_failure:
                for t in subscribe:
                    c.subscribe(t, 1)
            self.connected.set()

        self.c.on_connect = on_connect
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.connected.wait(5)
        time.sleep(0.2)  # let subscriptions settle

    def pub(self, topic, payload=b"x"):
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def wait_for(self, topic, timeout=5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(t == topic for t, _ in self.got):
                return True
            time.sleep(0.02)
        return False

    def topics(self):
        return [t for t, _ in self.got]

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def test_shipped_broker_config_has_no_plain_listener_off_loopback():
    """Every listener not bound to loopback carries its certificate and key (TLS or no start)."""
    blocks = re.split(r"(?m)^listener ", (REPO / "configs/mosquitto/mosquitto.conf").read_text())
    assert len(blocks) > 1
    for block in blocks[1:]:
        head = block.splitlines()[0].split()
        if head[1:] == ["127.0.0.1"]:
            continue
        assert re.search(r"(?m)^certfile\s+\S+", block), f"listener {head} has no certfile"
        assert re.search(r"(?m)^keyfile\s+\S+", block), f"listener {head} has no keyfile"


def test_anonymous_and_wrong_password_are_refused(secure_broker):
    anon = Client(secure_broker.port)
    assert anon.rc.is_failure and "authori" in str(anon.rc).lower()
    anon.close()
    USERS["mallory"] = "guess"
    try:
        bad = Client(secure_broker.port, "mallory")
        assert bad.rc.is_failure
        bad.close()
    finally:
        del USERS["mallory"]


def test_acl_node_prefix_and_operator_commands(secure_broker):
    port = secure_broker.port
    op = Client(port, "operator", subscribe=["qnet/v1/#"])
    bob = Client(port, "bob", subscribe=["qnet/v1/bob/cmd/#"])
    alice = Client(port, "alice", subscribe=["qnet/v1/bob/cmd/#", "qnet/v1/bob/telemetry/#"])
    try:
        alice.pub("qnet/v1/bob/telemetry/singles")  # under bob's prefix: refused
        alice.pub("qnet/v1/bob/cmd/laser")  # a node publishing a command: refused
        alice.pub("qnet/v1/alice/cmd/laser")  # not even to itself
        alice.pub("qnet/v1/alice/telemetry/singles")  # its own prefix: allowed (marker)
        alice.pub("qnet/v1/alice/status")
        assert op.wait_for("qnet/v1/alice/status")
        assert op.topics() == ["qnet/v1/alice/telemetry/singles", "qnet/v1/alice/status"]

        bob.pub("qnet/v1/bob/telemetry/qber")
        # operators command any node, under their own name only
        op.pub("qnet/v1/bob/cmd/bridge/laser", b"forged")  # as another user: refused
        op.pub("qnet/v1/bob/cmd/operator/laser", b"on")
        assert bob.wait_for("qnet/v1/bob/cmd/operator/laser")
        assert op.wait_for("qnet/v1/bob/telemetry/qber")
        bob.pub("qnet/v1/bob/reply/operator/laser")
        assert op.wait_for("qnet/v1/bob/reply/operator/laser")
        time.sleep(0.3)
        assert bob.topics() == ["qnet/v1/bob/cmd/operator/laser"]
        # the operator reads its own requests' replies, not other users' requests
        assert "qnet/v1/bob/cmd/operator/laser" not in op.topics()
        assert alice.topics() == []  # alice may not read bob's commands or telemetry
    finally:
        for c in (op, bob, alice):
            c.close()


def test_birth_death_status_and_secrets_never_logged(
    secure_broker, vm, tmp_path, monkeypatch, caplog
):
    """Publisher and bridge authenticate with secrets from env/file; nothing logs them."""
    secret_file = tmp_path / "bridge.secret"
    secret_file.write_text(USERS["bridge"] + "\n")
    monkeypatch.setenv("QNET_ALICE_PW", USERS["alice"])
    caplog.set_level(logging.DEBUG)
    op = Client(secure_broker.port, "operator", subscribe=[status_topic("alice")])
    bridge = Bridge(
        BridgeSettings.model_validate(
            {
                "broker": {
                    "port": secure_broker.port,
                    "client_id": "bridge-1",
                    "username": "bridge",
                    "password": {"file": str(secret_file)},
                },
                "influx": {"url": vm.url},
                "spool": {"path": str(tmp_path / "spool.db")},
            }
        )
    )
    bridge.start()
    try:
        assert bridge.connected.wait(5)

        async def main():
            pub = Publisher(
                publisher_settings(
                    tmp_path, secure_broker, username="alice", password={"env": "QNET_ALICE_PW"}
                )
            )
            pub.start()
            pub.submit([stream_record("alice", i) for i in range(20)])
            assert await pub.wait_drained(10)
            await pub.close()

        asyncio.run(main())
        deadline = time.monotonic() + 10
        while len(stored_seqs(vm)) < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sorted(stored_seqs(vm)) == list(range(1, 21))
        statuses = [json.loads(p) for t, p in op.got]
        assert [s["online"] for s in statuses] == [True, False]  # birth, then clean-close death
        assert statuses[0]["session"] == statuses[1]["session"]
    finally:
        bridge.stop()
        op.close()
    assert "alice" in caplog.text  # logs were captured at DEBUG ...
    for secret in (USERS["alice"], USERS["bridge"]):
        assert secret not in caplog.text  # ... and no password is in them


def test_death_certificate_when_publisher_is_killed(secure_broker, tmp_path):
    """SIGKILL a publisher process: the broker publishes its retained will (offline)."""
    code = f"""
import asyncio, os
from controller.testing.pipeline import publisher_settings
from controller.testing import servers
from telemetry import Publisher
from pathlib import Path
os.environ["PW"] = {USERS["alice"]!r}
async def main():
    s = servers.Server("x", [], {secure_broker.port}, Path("."), lambda s: True)
    pw = {{"env": "PW"}}
    p = Publisher(publisher_settings(Path({str(tmp_path)!r}), s, username="alice", password=pw))
    p.start()
    while not p.connected:
        await asyncio.sleep(0.05)
    print("up", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"up"
        time.sleep(0.3)
        proc.kill()
        proc.wait()
        op = Client(secure_broker.port, "operator", subscribe=[status_topic("alice")])
        # keepalive is 30 s; the broker notices the closed socket at once and sends the will
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if op.got and not json.loads(op.got[-1][1])["online"]:
                break
            time.sleep(0.05)
        op.close()
        last = json.loads(op.got[-1][1])
        assert last["online"] is False and last["node"] == "alice"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
