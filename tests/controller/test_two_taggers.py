"""Two independently clocked taggers: the merger's clock map and the daemon's drift tracking."""

import asyncio
from pathlib import Path

import numpy as np
import pytest
import yaml

from coincidence import ClockDrift, DriftTracker, TagBatch
from controller._daemon_config import load_daemon_config
from controller.daemon import Daemon
from controller.merge import MergedTagSource
from drivers.sim.testbed import Testbed, TestbedConfig
from tests.controller._sources import ListSource, random_batches

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
OFFSET_PS, DRIFT_PPM = 12_300_000, -3.0


def _true_stream(rng, ends, rate=2e-9):
    return random_batches(rng, 0, ends, rate)


def _on_b_clock(batches, offset_ps, drift_ppm):
    """The same tags read by a tagger whose clock is ``offset + t (1 + ppm 1e-6)``."""

    def clk(t):
        t = np.asarray(t, np.int64)
        return t + offset_ps + np.round(t * (drift_ppm * 1e-6)).astype(np.int64)

    return [
        TagBatch(clk(b.timestamps), b.channels, int(clk(b.begin_ps)), int(clk(b.end_ps)))
        for b in batches
    ]


def _drain(src):
    got = []
    while (batch := src.read(0.1)) is not None:
        got.append(batch)
    return TagBatch.concatenate(got)


def test_clock_map_puts_the_second_tagger_on_the_first_clock():
    rng = np.random.default_rng(3)
    ends = [k * 200_000_000_000 for k in range(1, 11)]  # 2 s of tags in 0.2 s batches
    a, truth = _true_stream(rng, ends), _true_stream(rng, ends)
    b = _on_b_clock(truth, OFFSET_PS, DRIFT_PPM)
    src = MergedTagSource([ListSource(a), ListSource(b)], [0, 4], 8)
    src.set_clock_map(1, ClockDrift(OFFSET_PS, DRIFT_PPM, np.zeros(0), np.zeros(0), 0.0))
    merged = _drain(src)
    assert merged.begin_ps == 0 and merged.end_ps == pytest.approx(ends[-1], abs=2)
    got = np.sort(merged.timestamps[merged.channels >= 4])
    want = np.concatenate([x.timestamps for x in truth])
    want = want[want < merged.end_ps]
    assert got.size == want.size
    assert np.max(np.abs(got - want)) <= 1  # ps rounding only, 6 us of drift removed
    # without the map the second tagger's tags sit 12.3 us - 3 us/s away
    raw = _drain(MergedTagSource([ListSource(a), ListSource(b)], [0, 4], 8))
    assert raw.begin_ps == b[0].begin_ps


def test_changing_the_map_mid_stream_keeps_the_stream_ordered_and_contiguous():
    rng = np.random.default_rng(4)
    ends = [k * 100_000_000 for k in range(1, 41)]
    a = _true_stream(rng, ends, rate=1e-6)
    b = _on_b_clock(_true_stream(rng, ends, rate=1e-6), 0, 0.0)
    src = MergedTagSource([ListSource(a), ListSource(b)], [0, 4], 8)
    first = [src.read(0.1) for _ in range(5)]
    # a map that moves the second tagger's times 50 us back, then forward again
    src.set_clock_map(1, ClockDrift(50_000_000, 0.0, np.zeros(0), np.zeros(0), 0.0))
    middle = [src.read(0.1) for _ in range(5)]
    src.set_clock_map(1, None)
    merged = TagBatch.concatenate(first + middle + [_drain(src)])
    assert np.all(np.diff(merged.timestamps) >= 0)
    assert merged.begin_ps == 0 and merged.end_ps == ends[-1]
    with pytest.raises(ValueError, match="no source 2"):
        src.set_clock_map(2, None)


def test_compose_and_tracker_follow_a_drift():
    first = ClockDrift(1_000_000.0, 2.0, np.zeros(0), np.zeros(0), 0.0)
    t = np.linspace(0, 1e12, 5)
    second = ClockDrift(-300.0, -0.5, t, -300.0 - 0.5e-6 * t, 0.0)
    total = first.compose(second)
    tb = np.array([5_000_000_000, 700_000_000_000], np.int64)
    assert np.allclose(total.to_clock_a(tb), second.to_clock_a(first.to_clock_a(tb)), atol=2)
    assert np.allclose(total.offset_at(t), total.window_offsets_ps, atol=1e-3)
    tracker = DriftTracker.from_fit(total, max_delay_ps=10**9, max_windows=8)
    for ti in np.linspace(2e12, 9e12, 8):  # the drift changed to +1.7 ppm
        fit = tracker.add_offset(ti, total.offset_at(2e12) + 1.7e-6 * (ti - 2e12))
    assert fit is not None and fit.drift_ppm == pytest.approx(1.7, abs=1e-6)
    assert tracker.added_offsets == 8 and tracker.n_windows == 8


def test_daemon_tracks_two_taggers_with_offset_and_drift(tmp_path):
    raw_tb = TestbedConfig.load(CONFIGS / "testbed.yaml").model_dump()
    raw_tb["physics"]["clocks"].update(mode="two_taggers", offset_ps=OFFSET_PS, drift_ppm=DRIFT_PPM)
    raw_tb["physics"]["bob"]["drift_rad_per_sqrt_s"] = 0.0
    testbed = Testbed(TestbedConfig.model_validate(raw_tb))
    raw = {
        "node": "two-tagger-node",
        "instruments": {},
        "daemon": {
            "acquisition": {
                "source": {
                    "kind": "testbed",
                    "config": str(CONFIGS / "testbed.yaml"),
                    "speed": 2.0,
                    "serve": False,
                },
                "window_s": 0.5,
                "roles": {
                    "alice": {"H": 0, "V": 1, "D": 2, "A": 3},
                    "bob": {"H": 4, "V": 5, "D": 6, "A": 7},
                },
            },
            "calibration": {"capture_s": 2.0, "track_every": 2},
        },
    }
    p = tmp_path / "d.yaml"
    p.write_text(yaml.safe_dump(raw))
    cfg = load_daemon_config(p)
    expected = testbed.expected_rates()
    want_hz = float(np.sum(expected["coincidences_hz"]))
    qber_limit = 0.05

    async def main():
        d = Daemon(cfg, testbed=testbed)
        await d.start()
        try:
            for _ in range(300):
                await asyncio.sleep(0.1)
                if d.calibration.get("state") in ("done", "failed"):
                    break
            assert d.calibration["state"] == "done", d.calibration
            clock = d.calibration["clock"]
            assert clock["drift_ppm"] == pytest.approx(DRIFT_PPM, abs=0.1)
            await d.wait_window(10.0)  # the first window wholly after the new delays
            rows = []
            for _ in range(20):
                r = await d.wait_window(10.0)
                rep = r.report
                rate = float(rep.coincidences[0:4, 4:8].sum()) / rep.duration_s
                rows.append((r.link_qber(100), rate))
            tracked = dict(d.calibration["clock"])
            # a calibration on command refits on top of the installed map
            again = await d.calibrate()
            assert again["clock"]["drift_ppm"] == pytest.approx(DRIFT_PPM, abs=0.1)
            await d.wait_window(10.0)
            r = await d.wait_window(10.0)
            assert r.link_qber(100) < qber_limit
            return tracked, rows
        finally:
            await d.shutdown()
            testbed.stop()

    tracked, rows = asyncio.run(main())
    qbers = [q for q, _ in rows]
    rates = [r for _, r in rows]
    assert all(q < qber_limit for q in qbers), qbers
    assert all(abs(r / want_hz - 1) < 0.2 for r in rates), (rates, want_hz)
    # the tracker kept refining the clock fit while running
    assert tracked.get("updates", 0) >= 3, tracked
    assert tracked["drift_ppm"] == pytest.approx(DRIFT_PPM, abs=0.1)


def test_a_recalibration_keeps_the_pin_so_the_delays_do_not_jump():
    """Bob's delays must not move by the drift since the last calibration (-3 ppm x 20 s = 60 us,
    beyond the +-50 us delay search): the recalibration keeps the installed map's pin."""
    from coincidence import RoleMap, TagBatch, find_delay, generate_two_clocks
    from controller.calibration import fit_clock, pin_clock

    roles = RoleMap.from_dict(
        {"alice": {"H": 0, "V": 1, "D": 2, "A": 3}, "bob": {"H": 4, "V": 5, "D": 6, "A": 7}}
    )
    off, ppm, dur = 12_300_000.0, -3.0, 2 * 10**12

    def capture(begin_ps, installed):
        ta, tb = generate_two_clocks(
            duration_ps=dur,
            singles_rate_hz=50e3,
            heralding=0.3,
            offset_ps=off + ppm * 1e-6 * begin_ps,
            ppm=ppm,
            jitter_ps=50.0,
            seed=begin_ps % 997,
            begin_ps=begin_ps,
        )
        if installed is not None:  # what the merger hands on: Bob's tags on the map
            tb = installed.to_clock_a(tb)
        tb = tb[(tb >= begin_ps) & (tb < begin_ps + dur)]
        t = np.concatenate([ta, tb])
        c = np.concatenate([np.zeros(ta.size, np.uint8), np.full(tb.size, 4, np.uint8)])
        return TagBatch.sorted(t, c, begin_ps, begin_ps + dur)

    fit1, pin1, _ = fit_clock(capture(0, None), roles, None, max_delay_ps=50_000_000)
    installed = pin_clock(fit1, pin1)
    fit2, pin2, fixed = fit_clock(
        capture(20 * 10**12, installed), roles, installed, max_delay_ps=50_000_000, pin_ps=pin1
    )
    assert pin2 == pin1
    assert fit2.drift_ppm == pytest.approx(ppm, abs=0.05)
    lag = find_delay(
        fixed.timestamps[fixed.channels == 0],
        fixed.timestamps[fixed.channels == 4],
        max_delay_ps=50_000_000,
    ).delay_ps
    assert abs(lag - pin1) < 1000, (lag, pin1)
