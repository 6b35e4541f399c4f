"""Publisher -> real mosquitto -> ``qnet bridge`` -> real VictoriaMetrics, with exact counts."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import paho.mqtt.client as mqtt
import pytest

from controller.testing import servers
from controller.testing.pipeline import (
    BridgeProcess,
    bridge_config,
    publish_stream,
    publisher_settings,
    stored_seqs,
    stream_record,
    wait_for_count,
)
from telemetry import Publisher, Record, to_line

pytestmark = [pytest.mark.servers, pytest.mark.slow]


def _assert_exactly_once(seqs: list[int], n: int) -> None:
    missing = set(range(1, n + 1)) - set(seqs)
    assert not missing, f"{len(missing)} points lost, e.g. {sorted(missing)[:10]}"
    assert len(seqs) == n, f"{len(seqs) - n} points stored more than once"
    assert max(seqs) == n


def test_stream_arrives_exactly_once(tmp_path, mosquitto, vm, bridge):
    n = 3000

    async def main():
        pub = Publisher(publisher_settings(tmp_path, mosquitto))
        pub.start()
        await publish_stream(pub, "alice", n, rate_hz=3000, chunk=50)
        assert await pub.wait_drained(20)
        await pub.close()

    asyncio.run(main())
    seqs = wait_for_count(vm, n, 20)
    _assert_exactly_once(seqs, n)
    # every field of the schema record made it, with the source timestamp (ms precision)
    series = servers.vm_export(vm, '{__name__="singles_counts",channel="2"}')
    assert len(series) == 1
    ts0 = stream_record("alice", 1).time_ns // 10**6
    assert series[0]["timestamps"][0] == ts0
    assert series[0]["values"][0] == 1


def test_broker_outage_loses_nothing(tmp_path, mosquitto, vm, bridge):
    n = 1500

    async def main():
        pub = Publisher(publisher_settings(tmp_path, mosquitto))
        pub.start()
        task = asyncio.create_task(publish_stream(pub, "alice", n, rate_hz=500))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(mosquitto.stop)
        await asyncio.sleep(2.5)
        assert not pub.connected and len(pub.outbox) > 0  # records wait in the outbox
        await asyncio.to_thread(mosquitto.start)
        await task
        assert await pub.wait_drained(30)
        assert pub.reconnects >= 1
        await pub.close()

    asyncio.run(main())
    seqs = wait_for_count(vm, n, 30)
    _assert_exactly_once(seqs, n)


def test_broker_death_with_messages_in_flight_is_noticed_at_once(tmp_path, mosquitto):
    """A broker frozen (SIGSTOP, so no PUBACK comes) then killed: the connection loss is seen
    within a second or two, not after aiomqtt's 10 s publish timeout, and nothing is lost."""
    n = 200

    async def main():
        pub = Publisher(publisher_settings(tmp_path, mosquitto))
        pub.start()
        deadline = time.monotonic() + 10
        while not pub.connected:
            assert time.monotonic() < deadline, "publisher never connected"
            await asyncio.sleep(0.05)
        os.kill(mosquitto.pid, signal.SIGSTOP)
        pub.submit([stream_record("alice", i) for i in range(n)])
        await asyncio.sleep(0.5)  # the messages are on the wire, unacknowledged
        assert pub.connected and len(pub.outbox) == n
        t_kill = time.monotonic()
        await asyncio.to_thread(mosquitto.kill)
        while pub.connected:
            assert time.monotonic() - t_kill < 3.0, "connection loss not noticed within 3 s"
            await asyncio.sleep(0.02)
        assert len(pub.outbox) == n  # unacknowledged rows are kept
        await asyncio.to_thread(mosquitto.start)
        assert await pub.wait_drained(20)
        assert pub.reconnects >= 1 and pub.published == n
        await pub.close()

    asyncio.run(main())


def test_database_outage_and_bridge_kill_lose_nothing(tmp_path, mosquitto, vm, bridge):
    """DB stopped mid-stream; the bridge is SIGKILLed while its spool holds acked messages."""
    n = 1500

    async def main():
        pub = Publisher(publisher_settings(tmp_path, mosquitto))
        pub.start()
        task = asyncio.create_task(publish_stream(pub, "alice", n, rate_hz=500))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(vm.stop)
        await asyncio.sleep(1.5)
        # the broker got its PUBACKs: the points are in the bridge's spool, nowhere else
        assert await pub.wait_drained(10)
        bridge.kill()
        await asyncio.sleep(0.5)
        await asyncio.to_thread(bridge.start)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(vm.start)
        await task
        assert await pub.wait_drained(20)
        await pub.close()

    asyncio.run(main())
    seqs = wait_for_count(vm, n, 30)
    _assert_exactly_once(seqs, n)
    assert "failed" in bridge.text()  # the writes did fail while the DB was down


def test_bridge_sigkill_mid_stream(tmp_path, mosquitto, vm, bridge):
    n = 6000

    async def main():
        pub = Publisher(publisher_settings(tmp_path, mosquitto))
        pub.start()
        task = asyncio.create_task(publish_stream(pub, "alice", n, rate_hz=3000, chunk=30))
        for _ in range(2):
            await asyncio.sleep(0.6)
            bridge.kill()  # mid-batch: points are flowing at 3000/s
            await asyncio.to_thread(bridge.start)
        await task
        assert await pub.wait_drained(20)
        await pub.close()

    asyncio.run(main())
    seqs = wait_for_count(vm, n, 30)
    _assert_exactly_once(seqs, n)


def test_bad_payloads_are_dropped_and_bridge_keeps_running(tmp_path, mosquitto, vm):
    cfg = bridge_config(tmp_path, mosquitto, vm, max_payload_bytes=4096)
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log").start()
    try:
        good = to_line(
            Record("singles", {"node": "alice", "channel": "1"}, {"counts": 7, "seq": 1}, 10**18)
        )
        bad = [
            ("qnet/v1/alice/telemetry/singles", b"this is not line protocol"),
            ("qnet/v1/alice/telemetry/singles", b"\xff\xfe\x00garbage"),
            ("qnet/v1/alice/telemetry/singles", good.replace("alice", "bob").encode()),
            ("qnet/v1/alice/telemetry/singles", good.replace("counts=7i", "counts=7.5").encode()),
            ("qnet/v1/alice/telemetry/singles", good.replace("singles", "nosuch").encode()),
            ("qnet/v1/alice/telemetry/singles", (good + "\n").encode() * 200),  # > 4096 bytes
            ("qnet/v1/alice/telemetry/singles", b""),
        ]
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="raw-pub")
        c.connect("127.0.0.1", mosquitto.port)
        c.loop_start()
        for topic, payload in bad:
            c.publish(topic, payload, qos=1).wait_for_publish(5)
        c.publish("qnet/v1/alice/telemetry/singles", good.encode(), qos=1).wait_for_publish(5)
        c.loop_stop()
        c.disconnect()
        seqs = wait_for_count(vm, 1, 15)
        assert seqs == [1]
        deadline = time.monotonic() + 10
        while bridge.text().count("dropped message") < len(bad) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert bridge.text().count("dropped message") == len(bad)
        assert "max_payload_bytes" in bridge.text()
        assert bridge.alive()
        assert stored_seqs(vm, node="bob") == []
    finally:
        assert bridge.stop() == 0


def test_full_spool_applies_backpressure_not_memory(tmp_path, mosquitto, vm):
    """Spool bound 10 messages, database down: the bridge stops acking, the broker keeps it."""
    import sqlite3

    cfg = bridge_config(tmp_path, mosquitto, vm, spool={"max_messages": 10}, queue_messages=5)
    vm.stop()
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log").start()
    try:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="raw-pub")
        c.connect("127.0.0.1", mosquitto.port)
        c.loop_start()
        for i in range(40):
            rec = Record(
                "singles",
                {"node": "alice", "channel": "1"},
                {"counts": i, "seq": i + 1},
                10**18 + i * 10**6,
            )
            line = to_line(rec)
            c.publish("qnet/v1/alice/telemetry/singles", line.encode(), qos=1).wait_for_publish(5)
        c.loop_stop()
        c.disconnect()
        time.sleep(2.0)
        con = sqlite3.connect(str(tmp_path / "bridge-spool.db"))
        assert con.execute("SELECT COUNT(*) FROM spool").fetchone()[0] == 10
        con.close()
        assert bridge.alive()
        vm.start()
        seqs = wait_for_count(vm, 40, 30)
        _assert_exactly_once(seqs, 40)
    finally:
        bridge.stop()
