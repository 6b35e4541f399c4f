"""The daemon's command listener in-process against a real mosquitto (plain and TLS).

A daemon without instruments or acquisition: only the publisher and the listener run.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from controller._daemon_config import load_daemon_config
from controller._remote import broker_from, request
from controller.daemon import Daemon
from controller.testing import servers
from telemetry import command_topic, reply_topic

pytestmark = [pytest.mark.servers, pytest.mark.timeout(60)]

NODE = "cmd-node"


def _config(tmp_path: Path, broker: dict[str, Any]) -> Path:
    raw = {
        "node": NODE,
        "instruments": {},
        "daemon": {
            "telemetry": {
                "broker": {"host": "127.0.0.1", "client_id": f"d-{uuid.uuid4().hex[:6]}", **broker},
                "outbox": {"path": str(tmp_path / "outbox.sqlite")},
            },
            "permissions": {"default_role": "operator"},
        },
    }
    p = tmp_path / "daemon.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _listener(d: Daemon) -> asyncio.Task[Any]:
    return next(t for t in d._tasks if t.get_name() == "qnet-commands")


async def _until(cond: Any, timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _ask(cfg_path: Path, body: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
    node, b = broker_from(cfg_path, None, None, None)
    return await request(b, node, body, timeout_s)


@pytest.fixture
def mq(tmp_path):
    """A real mosquitto on a free loopback port (anonymous: any password is accepted)."""
    servers.require("mosquitto")
    srv = servers.start_mosquitto(tmp_path / "mq")
    yield srv
    srv.stop()


def test_retained_request_is_refused_not_executed(tmp_path, mq):
    cfg_path = _config(tmp_path, {"port": mq.port})

    async def main() -> None:
        async with aiomqtt.Client("127.0.0.1", mq.port, identifier="old-operator") as c:
            await c.subscribe(reply_topic(NODE, "old"), qos=1)
            # left retained on the broker, e.g. by a script with retain on
            body = {"id": "r1", "device": "daemon", "action": "pause_key"}
            await c.publish(command_topic(NODE, "old"), json.dumps(body), qos=1, retain=True)
            d = Daemon(load_daemon_config(cfg_path))
            await d.start()
            try:
                async with asyncio.timeout(10):
                    msg = await anext(aiter(c.messages))
                reply = json.loads(msg.payload)
                assert reply["id"] == "r1" and not reply["ok"], reply
                assert reply["error"]["code"] == "bad_request"
                assert "retained commands are not executed" in reply["error"]["message"]
                assert d.key_paused is False
                # the same request, not retained, is executed
                r = await _ask(cfg_path, {"device": "daemon", "action": "pause_key"})
                assert r["ok"] and d.key_paused is True, r
            finally:
                await d.shutdown()

    asyncio.run(main())


def test_listener_outlives_a_missing_broker_password(tmp_path, monkeypatch, mq):
    var = f"QNET_TEST_PW_{uuid.uuid4().hex[:8]}"
    monkeypatch.delenv(var, raising=False)
    cfg_path = _config(
        tmp_path,
        {
            "port": mq.port,
            "username": "daemon",
            "password": {"env": var},
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.2,
        },
    )

    async def main() -> None:
        d = Daemon(load_daemon_config(cfg_path))
        await d.start()
        try:
            await _until(lambda: any(var in e["text"] for e in d.events), 5, "the password error")
            text = next(e["text"] for e in d.events if var in e["text"])
            assert "daemon.telemetry.broker.password" in text, text
            await asyncio.sleep(0.5)  # several retries
            assert not _listener(d).done()
            monkeypatch.setenv(var, "pw")  # fixed: the next retry connects
            await _until(
                lambda: any("subscribed" in e["text"] for e in d.events), 5, "the listener"
            )
            r = await _ask(cfg_path, {"device": "daemon", "action": "status"})
            assert r["ok"] and r["result"]["node"] == NODE, r
        finally:
            await d.shutdown()

    asyncio.run(main())


def _make_certs(d: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    key = ("-newkey", "rsa:2048", "-nodes")
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=qnet-test-ca")
    run("req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        *("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
        *("-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf"),
    )
    return d / "ca.crt", d / "server.crt", d / "server.key"


def test_remote_requests_and_listener_over_tls(tmp_path):
    servers.require("mosquitto")
    ca, cert, key = _make_certs(tmp_path)
    mq = servers.start_mosquitto(
        tmp_path / "mq", extra_config=f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
    )
    try:
        cfg_path = _config(tmp_path, {"port": mq.port, "tls": {"ca_file": str(ca)}})

        async def main() -> None:
            d = Daemon(load_daemon_config(cfg_path))
            await d.start()
            try:
                await _until(
                    lambda: any("subscribed" in e["text"] for e in d.events), 10, "the listener"
                )
                # what `qnet status/get/set/calibrate CONFIG` do: TLS from the config
                r = await _ask(cfg_path, {"device": "daemon", "action": "status"}, 10.0)
                assert r["ok"] and r["result"]["node"] == NODE, r
            finally:
                await d.shutdown()

        asyncio.run(main())
    finally:
        mq.stop()


def test_listener_outlives_an_unreadable_tls_file(tmp_path, mq):
    missing = tmp_path / "no-such-ca.crt"
    cfg_path = _config(
        tmp_path, {"port": mq.port, "tls": {"ca_file": str(missing)}, "reconnect_max_s": 0.2}
    )

    async def main() -> None:
        d = Daemon(load_daemon_config(cfg_path))
        await d.start()
        try:
            await _until(
                lambda: sum("no-such-ca.crt" in e["text"] for e in d.events) >= 2,
                5,
                "the TLS error, twice",
            )
            text = next(e["text"] for e in d.events if "no-such-ca.crt" in e["text"])
            assert "daemon.telemetry.broker.tls" in text, text
            assert not _listener(d).done()
        finally:
            await d.shutdown()

    asyncio.run(main())


def test_status_cli_authenticates_and_shows_a_refusal(tmp_path, monkeypatch, mq):
    from typer.testing import CliRunner

    from controller.cli import app

    var = f"QNET_TEST_TOKEN_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(var, "s3cret")
    cfg_path = _config(tmp_path, {"port": mq.port})
    raw = yaml.safe_load(cfg_path.read_text())
    raw["daemon"]["permissions"] = {
        "default_role": "none",
        "users": {"alice": {"role": "viewer", "token": {"env": var}}},
    }
    cfg_path.write_text(yaml.safe_dump(raw))
    runner = CliRunner()
    auth = ["--user", "alice", "--token-env", var]
    live = ["--duration", "1", "--interval", "0.2"]

    def status(*args: str) -> Any:
        return runner.invoke(app, ["status", str(cfg_path), "--timeout", "5", *args])

    async def main() -> None:
        d = Daemon(load_daemon_config(cfg_path))
        await d.start()
        try:
            await _until(
                lambda: any("subscribed" in e["text"] for e in d.events), 10, "the listener"
            )
            # anonymous: refused, and the refusal is shown (not a blank view), exit 1
            for args in (["--once"], live):
                r = await asyncio.to_thread(status, *args)
                assert r.exit_code == 1, (args, r.output)
                assert "refused (forbidden)" in r.output, (args, r.output)
            # the viewer's user and token from the environment: the status itself
            r = await asyncio.to_thread(status, "--once", *auth)
            assert r.exit_code == 0, r.output
            assert json.loads(r.output)["node"] == NODE
            r = await asyncio.to_thread(status, *live, *auth)
            assert r.exit_code == 0, r.output
            assert NODE in r.output and "refused" not in r.output, r.output
        finally:
            await d.shutdown()

    asyncio.run(main())
