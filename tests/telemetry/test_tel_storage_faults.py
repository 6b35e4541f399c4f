"""The publisher on a full or read-only disk: it survives, says why once, reports its health,
and resumes by itself without losing a record it accepted (real tmpfs, real mosquitto)."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import paho.mqtt.client as mqtt
import pytest
import yaml
from typer.testing import CliRunner

from controller.testing.pipeline import REPO, publisher_settings, stream_record
from telemetry import (
    OutboxError,
    OutboxSettings,
    OutboxUnavailable,
    Publisher,
    check_outbox_path,
    parse_lines,
    status_topic,
)
from telemetry.testing import (
    FilesystemUnavailable,
    fill,
    read_only_filesystem,
    resize,
    small_filesystem,
)

pytestmark = [pytest.mark.servers]

NODE = "alice"


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs (skipped, saying why, where mounting is not permitted)."""
    try:
        with small_filesystem(tmp_path / "disk", 256 * 1024) as disk:
            yield disk
    except FilesystemUnavailable as exc:
        pytest.skip(f"needs a real full file system: {exc}")


@pytest.fixture
def read_only_dir(tmp_path):
    try:
        with read_only_filesystem(tmp_path / "ro") as ro:
            yield ro
    except FilesystemUnavailable as exc:
        pytest.skip(f"needs a read-only mount: {exc}")


class Subscriber:
    """Records the node's telemetry and retained status from the real broker."""

    def __init__(self, port: int) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-sub-{id(self)}")
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, m.payload))
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(f"qnet/v1/{NODE}/#", 1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        time.sleep(0.3)

    def counts(self) -> list[int]:
        out = []
        for topic, payload in list(self.got):
            if topic.endswith("/telemetry/singles"):
                out += [int(r.fields["counts"]) for r in parse_lines(payload.decode())]
        return out

    def statuses(self) -> list[dict]:
        return [json.loads(p) for t, p in list(self.got) if t == status_topic(NODE)]

    def alarms(self) -> list:
        return [
            r
            for t, p in list(self.got)
            if t.endswith("/telemetry/health")
            for r in parse_lines(p.decode())
            if r.tags.get("device") == "telemetry"
        ]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


async def _until(cond, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.05)
    return bool(cond())


def test_full_disk_stalls_telemetry_loudly_and_it_resumes_losing_nothing(
    tiny_disk, mosquitto, caplog
):
    """Reported: on a full 256 KiB tmpfs the publisher task died 1 s after start, the log
    repeated 'cannot rollback - no transaction is active', the status said online and
    nothing was sent after the disk was enlarged."""
    sub = Subscriber(mosquitto.port)
    filler = tiny_disk / "filler"
    n_total = 0

    async def main():
        nonlocal n_total
        pub = Publisher(publisher_settings(tiny_disk, mosquitto, NODE))
        healths = []
        pub.on_health = healths.append
        task = pub.start()
        pub.submit([stream_record(NODE, i) for i in range(50)])
        assert await pub.wait_drained(20)
        fill(filler)  # the disk is now full
        i = 50
        t_end = time.monotonic() + 2.0
        while time.monotonic() < t_end:  # a node keeps producing while the disk is full
            pub.submit([stream_record(NODE, k) for k in range(i, i + 20)])
            i += 20
            await asyncio.sleep(0.02)
        n_total = i
        assert await _until(lambda: pub.stalled, 10)
        await asyncio.sleep(1.5)  # long enough for the old code's task to die
        stalled_alive = not task.done()
        health = pub.health()
        assert await _until(lambda: any(not s["healthy"] for s in sub.statuses()), 10)
        filler.unlink()  # space returns, and the disk is enlarged (256 KiB holds no backlog)
        resize(tiny_disk, 8 * 2**20)
        resumed = await _until(lambda: not pub.stalled and pub.pending() == 0, 30)
        await pub.close()
        return stalled_alive, health, healths, resumed

    with caplog.at_level(logging.INFO, logger="qnet.telemetry"):
        stalled_alive, health, healths, resumed = asyncio.run(main())
    try:
        assert stalled_alive, "the publisher task ended on a storage error"
        assert not health["ok"] and health["state"] == "stalled"
        assert "database or disk is full" in health["error"]
        assert resumed, "nothing was sent once space returned"
        assert [h["ok"] for h in healths] == [False, True]  # stalled once, resumed once
        # everything accepted arrived, in order (seq order), nothing lost
        deadline = time.monotonic() + 10
        while len(set(sub.counts())) < n_total and time.monotonic() < deadline:
            time.sleep(0.1)
        got = sub.counts()
        assert sorted(set(got)) == list(range(n_total))
        # the node's status said it: online but not healthy, with the cause, then healthy again
        statuses = [s for s in sub.statuses() if s["online"]]
        bad = [s for s in statuses if not s["healthy"]]
        assert bad and "database or disk is full" in bad[0]["problem"]
        assert statuses[-1]["healthy"] is True
        # the alarm: a health record of device telemetry, stalled then ok
        assert [(a.fields["ok"], a.fields["state"]) for a in sub.alarms()] == [
            (False, "stalled"),
            (True, "ok"),
        ]
    finally:
        sub.close()
    text = caplog.text
    assert "cannot rollback" not in text  # the failed ROLLBACK no longer hides the cause
    said = [r for r in caplog.records if "database or disk is full" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]  # the real cause, once
    assert "telemetry resumed" in text


def test_memory_buffer_is_bounded_and_refusals_are_counted(tiny_disk, tmp_path):
    """Beyond the in-memory bound ``submit`` refuses (raises, counts): never silent."""

    async def main():
        settings = publisher_settings(tiny_disk, _NoBroker(), NODE)
        pub = Publisher(settings, memory_max_records=100)
        fill(tiny_disk / "filler")
        accepted = 0
        with pytest.raises(OutboxUnavailable, match="database or disk is full"):
            for i in range(0, 1000, 10):
                pub.submit([stream_record(NODE, k) for k in range(i, i + 10)])
                accepted += 10
        assert pub.stalled and pub.refused == 10 and accepted == 100
        assert pub.health()["held"] == 100
        (tiny_disk / "filler").unlink()
        assert not pub._try_storage()  # rows stored, but 256 KiB is no disk to resume on
        assert pub.health()["held"] == 0 and pub.stalled
        resize(tiny_disk, 8 * 2**20)
        assert pub._try_storage()  # what the storage upkeep does on its next attempt
        assert pub.health()["held"] == 0 and len(pub.outbox) == 100
        await pub.close(drain_s=0)

    asyncio.run(main())


class _NoBroker:
    port = 1  # nothing listens: these tests do not publish


def test_read_only_outbox_dir_fails_check_and_run_clearly(read_only_dir, tmp_path):
    """Reported: with the outbox directory read-only ``--check`` said valid, then
    ``qnet run`` died with a raw sqlite3.OperationalError traceback."""
    from controller.cli import app

    outbox = read_only_dir / "outbox.sqlite"
    problems = check_outbox_path(outbox)
    assert problems and "cannot create files" in problems[0], problems
    base = publisher_settings(tmp_path, _NoBroker(), NODE)
    settings = base.model_copy(update={"outbox": OutboxSettings(path=outbox)})
    with pytest.raises(OutboxError, match=str(outbox)):
        Publisher(settings)

    cfg = yaml.safe_load((REPO / "configs" / "sim-daemon.yaml").read_text())
    cfg["daemon"]["telemetry"]["outbox"] = {"path": str(outbox)}
    cfg["daemon"]["telemetry"]["broker"]["port"] = 1
    cfg["daemon"]["acquisition"] = None
    cfg["daemon"]["calibration"] = {"at_start": False}
    cfg["daemon"]["compensation"] = None
    cfg["daemon"]["interlocks"] = {
        k: v
        for k, v in cfg["daemon"]["interlocks"].items()
        if not str(v["reading"]).startswith(("max_", "qber", "sifted"))
    }
    path = tmp_path / "daemon.yaml"
    path.write_text(yaml.safe_dump(cfg))
    (tmp_path / "sim-node.yaml").write_text((REPO / "configs" / "sim-node.yaml").read_text())
    runner = CliRunner()
    r = runner.invoke(app, ["run", "--check", str(path)])
    assert r.exit_code == 2, r.output
    assert "daemon.telemetry.outbox.path" in r.output and "cannot create files" in r.output
    r = runner.invoke(app, ["run", str(path)])
    assert r.exit_code == 2, r.output
    assert "telemetry cannot start" in r.output and str(outbox) in r.output
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_check_reports_a_disk_without_space(tiny_disk):
    assert check_outbox_path(tiny_disk / "o.sqlite", min_free_bytes=16 * 2**20)
    assert check_outbox_path(tiny_disk / "o.sqlite", min_free_bytes=64 * 1024) == []


def test_daemon_status_is_not_healthy_while_telemetry_is_stalled(tiny_disk, mosquitto, tmp_path):
    """The daemon's status and events say so while its outbox cannot store, then recover."""
    from controller._daemon_config import load_daemon_config
    from controller.daemon import Daemon

    raw = {
        "node": NODE,
        "instruments": {},
        "daemon": {
            "acquisition": {
                "source": {
                    "kind": "testbed",
                    "config": str(REPO / "configs" / "testbed.yaml"),
                    "speed": 1.0,
                    "serve": False,
                },
                "window_s": 0.2,
                "roles": {
                    "alice": {"H": 0, "V": 1, "D": 2, "A": 3},
                    "bob": {"H": 4, "V": 5, "D": 6, "A": 7},
                },
            },
            "calibration": {"at_start": False},
            "telemetry": {
                "broker": {"port": mosquitto.port, "client_id": f"qnet-{NODE}"},
                "outbox": {"path": str(tiny_disk / "outbox.sqlite")},
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
            await d.wait_window(60)
            fill(tiny_disk / "filler")
            assert await _until(lambda: not d.status()["healthy"], 30)
            st = d.status()
            assert st["telemetry"]["state"] == "stalled"
            assert "database or disk is full" in st["telemetry"]["error"]
            (tiny_disk / "filler").unlink()
            resize(tiny_disk, 8 * 2**20)
            assert await _until(lambda: d.status()["healthy"], 30)

            def events():
                return [e["text"] for e in d.events if e["kind"] == "telemetry"]

            assert await _until(lambda: len(events()) >= 2, 10)  # the event follows on the loop
            said = events()
            assert said[0].startswith("telemetry stalled") and "disk is full" in said[0]
            assert said[-1].startswith("telemetry resumed")
        finally:
            await d.shutdown()

    asyncio.run(main())


def test_a_broken_database_connection_is_reopened_and_nothing_accepted_is_lost(tmp_path):
    """Not the disk but the connection fails (closed under the publisher): it reopens."""
    from telemetry import Outbox

    async def main():
        pub = Publisher(publisher_settings(tmp_path, _NoBroker(), NODE))
        pub.start()
        pub.submit([stream_record(NODE, k) for k in range(10)])
        pub.outbox._con.close()  # every use of it fails from now on
        pub.submit([stream_record(NODE, k) for k in range(10, 30)])
        assert pub.stalled and pub.health()["held"] == 20
        assert await _until(lambda: not pub.stalled, 60)
        assert pub.health()["held"] == 0 and pub.pending() == 30
        await pub.close(drain_s=0)

    asyncio.run(main())
    ob = Outbox(tmp_path / f"outbox-{NODE}.db")
    counts = [int(line.split("counts=")[1].split("i")[0]) for _, _, line in ob.peek(100)]
    ob.close()
    assert counts == list(range(30))  # all of them, in order
