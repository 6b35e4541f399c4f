import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from coincidence import RoleMap, TagBatch
from controller.acquisition import Acquisition, Windower, window_records
from controller.calibration import CalibrationError, find_channel_delays, track_shift
from drivers import TagSource
from drivers.sim import physics as ph
from drivers.sim.testbed import Testbed, TestbedConfig

ROLES = RoleMap(alice={"H": 0, "V": 1, "D": 2, "A": 3}, bob={"H": 4, "V": 5, "D": 6, "A": 7})
TESTBED = Path(__file__).resolve().parents[2] / "configs" / "testbed.yaml"


@pytest.fixture(scope="module")
def testbed_tags():
    """0.4 s of the emulated link's 8-channel stream (no polarization drift)."""
    raw = TestbedConfig.load(TESTBED).model_dump()
    raw["physics"]["bob"]["drift_rad_per_sqrt_s"] = 0.0
    cfg = TestbedConfig.model_validate(raw)
    tb = Testbed(cfg)
    src = tb.tag_source("both", speed=0)
    batches = [src.read() for _ in range(42)]
    src.close()
    delays = ph.channel_delays_ps(cfg.physics)
    return batches, delays - delays[0]


def test_calibration_finds_the_testbed_delays(testbed_tags):
    batches, truth = testbed_tags
    res = find_channel_delays(
        TagBatch.concatenate(batches[:20]), ROLES, 8, max_delay_ps=50_000_000, resolution_ps=20
    )
    assert res.unresolved == ()
    assert np.all(np.abs(res.delays_ps - truth) < 60), (res.delays_ps, truth)
    # a shift of Bob's side shows up in track_shift
    shifted = truth.copy()
    shifted[4:] -= 500
    s = track_shift(TagBatch.concatenate(batches[20:]), ROLES, shifted, max_shift_ps=2000)
    assert s is not None and abs(s - 500) < 60


def test_calibration_without_light_fails_clearly():
    b = TagBatch(np.arange(0, 10**9, 10**6, dtype=np.int64), np.zeros(1000, np.uint8), 0, 10**9)
    with pytest.raises(CalibrationError, match="no significant"):
        find_channel_delays(b, ROLES, 8, max_delay_ps=10**6)


def test_windows_are_exact_and_give_low_qber_once_aligned(testbed_tags):
    batches, truth = testbed_tags
    w = Windower(8, 0.1, 1000, ROLES, truth)
    results = []
    for b in batches:
        results += w.feed(b)
    covered = batches[-1].end_ps - batches[0].begin_ps
    assert len(results) == covered // 100_000_000_000  # whole 0.1 s windows
    for k, r in enumerate(results):
        assert r.index == k
        assert r.end_ps - r.begin_ps == 100_000_000_000
        assert r.report.duration_ps == 100_000_000_000
        assert r.n_tags == int(r.report.singles.sum())
    end = results[-1].end_ps
    total = sum(int(np.count_nonzero(b.timestamps < end)) for b in batches)
    assert sum(r.n_tags for r in results) == total
    r = results[-1]
    assert r.qber_z < 0.03 and r.qber_x < 0.03  # visibility 0.98 -> about 1 %
    assert r.secure_rate_bps > 0
    assert r.readings()["max_singles_rate_hz"] == pytest.approx(r.report.singles_rate_hz.max())
    recs = window_records(r, "sim-node", "alice-bob", ROLES)
    kinds = {x.measurement for x in recs}
    assert kinds == {"singles", "coincidences", "qber", "key_rate"}
    # misaligned (no delays): no coincidences in the Alice-Bob pairs
    w0 = Windower(8, 0.1, 1000, ROLES)
    out = []
    for b in batches[:12]:
        out += w0.feed(b)
    assert out[0].qber is None or out[0].sifted_rate_hz < r.sifted_rate_hz / 50


def test_new_delays_apply_from_the_next_window(testbed_tags):
    batches, truth = testbed_tags
    w = Windower(8, 0.1, 1000, ROLES)
    out = []
    for k, b in enumerate(batches):
        if k == 5:
            w.set_delays(truth)
        out += w.feed(b)
    assert math.isnan(out[0].link_qber(100)) or out[0].sifted_rate_hz < 1000
    assert np.array_equal(out[0].delays_ps, np.zeros(8))
    assert np.array_equal(out[1].delays_ps, truth)
    assert out[1].link_qber(100) < 0.03


def test_batch_splitting_handles_any_batch_size():
    ts = np.arange(0, 1_000_000, 7, dtype=np.int64)
    ch = (ts % 3).astype(np.uint8)
    whole = TagBatch(ts, ch, 0, 1_000_000)
    w = Windower(3, 1e-7, 10)  # 100 ns windows
    pieces = [whole.split(c) for c in (123_457,)]
    head, tail = pieces[0]
    out = w.feed(head) + w.feed(tail)
    assert len(out) == 10
    assert [r.n_tags for r in out] == [
        int(np.count_nonzero((ts >= k * 100_000) & (ts < (k + 1) * 100_000))) for k in range(10)
    ]


class _Flaky(TagSource):
    def __init__(self, batches, fail_after):
        self.batches = list(batches)
        self.fail_after = fail_after

    @property
    def n_channels(self):
        return 8

    def read(self, timeout_s=1.0):
        if self.fail_after == 0:
            raise ConnectionError("tagger unplugged")
        self.fail_after -= 1
        if not self.batches:
            time.sleep(0.01)
            return None
        return self.batches.pop(0)


def test_acquisition_thread_reopens_a_failed_source(testbed_tags):
    batches, truth = testbed_tags
    opened = []
    states = []
    got = []
    done = threading.Event()

    def open_source():
        opened.append(1)
        if len(opened) == 1:
            return _Flaky(batches[:5], fail_after=3)
        return _Flaky(batches[3:], fail_after=10**6)

    def on_window(r):
        got.append(r)
        if len(got) >= 3:
            done.set()

    acq = Acquisition(
        open_source,
        Windower(8, 0.1, 1000, ROLES, truth),
        on_window,
        states.append,
        backoff_s=(0.01, 0.05),
    )
    acq.start()
    cap = acq.capture(0.05)
    assert done.wait(10)
    assert cap.done.wait(5) and cap.collected_ps >= 50_000_000_000
    acq.stop()
    assert len(opened) >= 2
    assert any(s.startswith("faulted") for s in states)
    assert acq.source_errors >= 1


class _ListSource(TagSource):
    def __init__(self, batches):
        self.batches = list(batches)

    @property
    def n_channels(self):
        return 8

    def read(self, timeout_s=1.0):
        if not self.batches:
            time.sleep(0.01)
            return None
        return self.batches.pop(0)


def test_acquisition_on_generate_pairs_gives_the_known_qber():
    from coincidence import generate_pairs
    from controller._cli_sample import bbm92_pair_channels

    pairs = bbm92_pair_channels()
    delays = [0, 100, 200, 300, 9_000_000, 9_000_150, 9_000_300, 9_000_450]
    whole = generate_pairs(
        duration_ps=400_000_000_000,
        pair_rate_hz=2e5,
        noise_rate_hz=100.0,
        n_channels=8,
        pair_channels=pairs,
        delays_ps=delays,
        jitter_ps=20.0,
        seed=5,
    )
    batches = whole.split_at(range(10**10, 4 * 10**11, 10**10))
    # the calibration finds the generator's delays from the raw tags
    cal = find_channel_delays(TagBatch.concatenate(batches[:10]), ROLES, 8, max_delay_ps=20_000_000)
    assert np.all(np.abs(cal.delays_ps - np.array(delays)) <= 40), cal.delays_ps
    got = []
    done = threading.Event()

    def on_window(r):
        got.append(r)
        if len(got) == 4:
            done.set()

    acq = Acquisition(
        lambda: _ListSource(batches), Windower(8, 0.1, 1000, ROLES, cal.delays_ps), on_window
    )
    acq.start()
    assert done.wait(30)
    acq.stop()
    qz = np.mean([r.qber_z for r in got])
    qx = np.mean([r.qber_x for r in got])
    assert abs(qz - 1 / 32) < 0.01 and abs(qx - 1 / 32) < 0.01, (qz, qx)
    # half of the pairs are sifted: 2e5 pairs/s * 1/2
    assert np.mean([r.sifted_rate_hz for r in got]) == pytest.approx(1e5, rel=0.05)


def test_window_readings_are_the_advertised_names(testbed_tags):
    from controller.acquisition import WINDOW_READINGS

    batches, truth = testbed_tags
    w = Windower(8, 0.01, 1000, ROLES, truth)
    out = [r for b in batches[:3] for r in w.feed(b)]
    assert out
    # --check accepts exactly these as interlock readings without a monitor entry
    assert tuple(out[0].readings()) == WINDOW_READINGS


def test_capture_keeps_a_running_total_of_its_tag_time():
    from controller.acquisition import Capture

    cap = Capture(30)
    ends = [(0, 10), (10, 25), (25, 40)]
    for begin, end in ends:
        cap.add(TagBatch(np.array([begin], np.int64), np.array([0], np.uint8), begin, end))
    assert cap.collected_ps == 40 == sum(b.duration_ps for b in cap.batches)
    cap.clear()
    assert cap.collected_ps == 0 and cap.batches == []


class _Summing(list):
    """A batch list that counts how often it is iterated (a re-sum walks it all)."""

    walks = 0

    def __iter__(self):
        type(self).walks += 1
        return super().__iter__()


def test_capture_does_not_resum_the_batches_on_each_new_one(testbed_tags):
    from controller.acquisition import Capture

    batches, truth = testbed_tags
    windower = Windower(8, 0.1, 1000, ROLES, truth)
    acq = Acquisition(lambda: _ListSource(batches), windower, lambda r: None)
    cap = Capture(round(0.3 * 1e12), batches=_Summing())
    with acq._lock:
        acq._captures.append(cap)
    acq.start()
    assert cap.done.wait(10)
    acq.stop()
    assert cap.collected_ps >= cap.duration_ps
    assert cap.collected_ps == sum(b.duration_ps for b in list.__iter__(cap.batches))
    assert _Summing.walks == 0  # one running total, not a sum over every batch per batch


def test_stopping_acquisition_hands_on_no_window_and_refuses_captures(testbed_tags):
    batches, truth = testbed_tags
    got = []
    first = threading.Event()
    release = threading.Event()

    def on_window(r):
        got.append(r)
        first.set()
        release.wait(5)  # the daemon is busy with this window while shutdown begins

    acq = Acquisition(
        lambda: _ListSource(batches), Windower(8, 0.001, 1000, ROLES, truth), on_window
    )
    acq.start()
    assert first.wait(10)
    acq.request_stop()
    release.set()
    acq.stop()
    # each ~10 ms batch completes several 1 ms windows: none after the stop request is handed on
    assert len(got) == 1
    cap = acq.capture(0.1)
    assert cap.done.is_set() and cap.error == "acquisition stopped"


def test_calibration_reports_uncertainties(testbed_tags):
    from controller.calibration import format_with_uncertainty

    batches, truth = testbed_tags
    res = find_channel_delays(
        TagBatch.concatenate(batches[:20]), ROLES, 8, max_delay_ps=50_000_000, resolution_ps=20
    )
    unc = res.uncertainties_ps
    assert unc.shape == (8,) and unc[0] == pytest.approx(0.0, abs=1e-3)
    assert np.all(np.isfinite(unc)) and np.all(unc[1:] > 0)
    # the delays are whole ps: allow the rounding on top of the statistics
    assert np.all(np.abs(res.delays_ps - truth) <= 5 * unc + 1), (res.delays_ps, truth, unc)
    assert all(p["delay_uncertainty_ps"] > 0 for p in res.pairs.values())
    summary = res.summary()
    assert len(summary["delay_uncertainties_ps"]) == 8
    assert "+-" in res.describe() and "channel 4:" in res.describe()
    assert format_with_uncertainty(9_793_455.2, 3.1) == "9 793 455 +- 3 ps"
    assert format_with_uncertainty(1234.567, 0.25) == "1 234.6 +- 0.2 ps"
    assert format_with_uncertainty(5.0, float("nan")) == "5 ps"
