"""Telemetry from the run reaches the database: a capture analysed by the daemon's own pipeline
(``controller.acquisition.Windower`` -> ``window_records``: singles, coincidences, QBER, key
rate) goes through the telemetry publisher -> MQTT broker -> bridge -> InfluxDB v2 write API
and is read back.

On the emulated testbed the check starts a real mosquitto and VictoriaMetrics
(controller/testing/servers.py) and an in-process bridge; on a real bench it uses
``hil.telemetry`` (the lab's broker and a VictoriaMetrics endpoint) and is skipped when
that section names none.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from ._checks import delays


def _export(url, match):
    with urllib.request.urlopen(f"{url}/internal/force_flush", timeout=10) as r:
        r.read()
    q = urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(f"{url}/api/v1/export?{q}", timeout=30) as r:
        return [json.loads(line) for line in r.read().splitlines() if line.strip()]


@pytest.fixture
def telemetry_target(bench, tmp_path):
    """(mqtt host, port, export url) of a broker + database the run publishes to."""
    t = bench.hil.telemetry
    if bench.testbed is None:
        if not (t.mqtt_host and t.influx_url):
            pytest.skip("hil.telemetry names no broker / database for this bench")
        yield t.mqtt_host, t.mqtt_port, t.influx_url
        return
    try:
        from controller.testing import servers
    except ImportError:
        pytest.skip(
            "controller/testing/servers.py (starts mosquitto / VictoriaMetrics) is not available"
        )
    for name in ("mosquitto", "victoria-metrics"):
        servers.require(name)  # skips with the reason (fails under CI=true)
    mq = servers.start_mosquitto(tmp_path / "mosquitto")
    try:
        vm = servers.start_victoria_metrics(tmp_path / "vm")
        try:
            yield "127.0.0.1", mq.port, vm.url
        finally:
            vm.stop()
    finally:
        mq.stop()


@pytest.mark.optical
@pytest.mark.needs("laser", "time_tagger")
def test_telemetry_of_the_run_in_database(bench, telemetry_target, tmp_path):
    """Singles of a capture, published as telemetry, are stored with the measured values."""
    from controller.acquisition import Windower, window_records
    from telemetry import Bridge, BridgeSettings, Publisher, PublisherSettings

    host, port, db_url = telemetry_target
    node = f"hil-{bench.node.node}"[:64]
    link = "hil-link"
    try:
        delays_ps = delays(bench)["delays_ps"]
    except AssertionError:  # a detector problem is other checks' business: publish anyway
        delays_ps = np.zeros(bench.n_channels, np.int64)
    bench.pump()
    batch = bench.acquire(0.1)
    # the daemon's own analysis and records: Windower -> window_records
    windower = Windower(
        bench.n_channels, 0.05, bench.hil.coincidence_window_ps, bench.roles, delays_ps
    )
    windows = windower.feed(batch)
    assert windows, "a 0.1 s capture gave no complete 0.05 s analysis window"
    t0 = time.time_ns()
    records = []
    for k, w in enumerate(windows):
        w = dataclasses.replace(w, time_ns=t0 + k * 1_000_000)
        records += window_records(w, node, link, bench.roles)
    # every window's singles, keyed the way the database returns them: (channel, time in ms)
    sent = {
        (str(c), (t0 + k * 1_000_000) // 1_000_000): int(w.report.singles[c])
        for k, w in enumerate(windows)
        for c in range(bench.n_channels)
    }

    bridge = Bridge(
        BridgeSettings.model_validate(
            {
                "broker": {"host": host, "port": port, "client_id": f"{node}-bridge"},
                "influx": {"url": db_url, "retry_min_s": 0.1, "retry_max_s": 0.5},
                "spool": {"path": str(tmp_path / "spool.db")},
            }
        )
    )
    bridge.start()
    try:
        assert bridge.connected.wait(10), (
            f"the bridge did not connect to the MQTT broker at {host}:{port} - is it running?"
        )
        pub = Publisher(
            PublisherSettings.model_validate(
                {
                    "node": node,
                    "broker": {"host": host, "port": port, "client_id": f"{node}-pub"},
                    "outbox": {"path": str(tmp_path / "outbox.db")},
                }
            )
        )

        async def publish():
            pub.start()
            pub.submit(records)
            drained = await pub.wait_drained(15)
            await pub.close()
            return drained

        assert asyncio.run(publish()), (
            f"the publisher could not deliver to the broker at {host}:{port} within 15 s"
        )
        # wait for every published window, not just the first one per channel: the bridge
        # stores them in batches, and a busy machine can leave the last batch in flight
        deadline = time.monotonic() + 30
        stored, kinds = {}, set()
        while time.monotonic() < deadline and (set(sent) - set(stored) or len(kinds) < 3):
            for s in _export(db_url, f'{{__name__="singles_counts",node="{node}"}}'):
                ch = s["metric"]["channel"]
                stored.update(
                    ((ch, ts), v) for ts, v in zip(s["timestamps"], s["values"], strict=True)
                )
            for name in ("coincidences_counts", "key_rate_sifted_bps", "qber_qber"):
                if _export(db_url, f'{{__name__="{name}",node="{node}"}}'):
                    kinds.add(name)
            time.sleep(0.2)
    finally:
        bridge.stop()
    missing = sorted({ch for ch, _ in set(sent) - set(stored)}, key=int)
    assert not missing, (
        f"singles of channels {missing} are not all in the database at {db_url} 30 s after "
        f"publishing ({len(set(sent) - set(stored))} of {len(sent)} window records missing) - "
        "check the bridge's log, the broker's ACL for qnet/v1/+/telemetry/# and the database"
    )
    wrong = {k: (stored[k], v) for k, v in sent.items() if stored[k] != v}
    assert not wrong, f"stored singles differ from the published ones (stored, sent): {wrong}"
    assert {"coincidences_counts", "key_rate_sifted_bps"} <= kinds, (
        f"only {sorted(kinds)} of the run's coincidence / key-rate / QBER records are stored"
    )
