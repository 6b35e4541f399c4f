"""TLS from settings: publisher and bridge verify a broker certificate signed by a test CA."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import pytest

from controller.testing import servers
from controller.testing.pipeline import publisher_settings, stored_seqs, stream_record
from telemetry import Bridge, BridgeSettings, Publisher

pytestmark = [pytest.mark.servers]


def _make_certs(d):
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=qnet-test-ca",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    )
    return d / "ca.crt", d / "server.crt", d / "server.key"


def test_publisher_and_bridge_over_tls(tmp_path, vm):
    servers.require("mosquitto")
    ca, cert, key = _make_certs(tmp_path)
    mq = servers.start_mosquitto(
        tmp_path / "mq", extra_config=f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
    )
    bridge = Bridge(
        BridgeSettings.model_validate(
            {
                "broker": {"port": mq.port, "client_id": "b-tls", "tls": {"ca_file": str(ca)}},
                "influx": {"url": vm.url},
                "spool": {"path": str(tmp_path / "spool.db")},
            }
        )
    )
    bridge.start()
    try:
        assert bridge.connected.wait(10)

        async def main():
            pub = Publisher(publisher_settings(tmp_path, mq, tls={"ca_file": str(ca)}))
            pub.start()
            pub.submit([stream_record("alice", i) for i in range(50)])
            assert await pub.wait_drained(10)
            await pub.close()

        asyncio.run(main())
        deadline = time.monotonic() + 10
        while len(stored_seqs(vm)) < 50 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sorted(stored_seqs(vm)) == list(range(1, 51))
    finally:
        bridge.stop()
        mq.stop()


def test_tls_refuses_a_broker_the_ca_did_not_sign(tmp_path):
    servers.require("mosquitto")
    ca, cert, key = _make_certs(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    other_ca, _, _ = _make_certs(other)
    mq = servers.start_mosquitto(
        tmp_path / "mq", extra_config=f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
    )
    try:

        async def main():
            pub = Publisher(publisher_settings(tmp_path, mq, tls={"ca_file": str(other_ca)}))
            pub.start()
            pub.submit([stream_record("alice", 0)])
            connected = False
            deadline = time.monotonic() + 10
            while pub.reconnects < 2 and time.monotonic() < deadline:
                connected = connected or pub.connected
                await asyncio.sleep(0.02)
            reconnects = pub.reconnects
            await pub.close(drain_s=0)
            return connected, reconnects

        connected, reconnects = asyncio.run(main())
        assert not connected and reconnects >= 1
    finally:
        mq.stop()
