"""The Testbed in-process: controls through the emulators, physics visible in the tags."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from coincidence import TagBatch, find_delay, track_drift
from drivers.sim import physics as ph
from drivers.sim.testbed import Testbed, TestbedConfig, TestbedError

from .conftest import TESTBED_YAML, coincidence_matrix, make_config, qber


def _read(tb: Testbed, seconds: float, side="both") -> TagBatch:
    src = tb.tag_source(side, speed=0)
    try:
        parts = [src.read() for _ in range(round(seconds / tb.config.chunk_s))]
    finally:
        src.close()
    return TagBatch.concatenate(parts)


def test_config_merges_the_node_config_instruments():
    cfg = TestbedConfig.load(TESTBED_YAML)
    assert {
        "pump_laser",
        "snspd_bias",
        "spad",
        "power_meter",
        "polarization_controller",
        "time_tagger",
    } <= set(cfg.instruments)
    assert cfg.instruments["time_tagger"].resource == "TCPIP::127.0.0.1::15106::SOCKET"
    assert cfg.instruments["time_tagger"].stream_port == 15107
    assert cfg.instruments["snspd_bias"].channels == [0]


def test_bad_config_names_the_field(tmp_path):
    bad = tmp_path / "tb.yaml"
    bad.write_text("physics:\n  source:\n    visibility: 3\n")
    with pytest.raises(TestbedError, match="visibility"):
        TestbedConfig.load(bad)
    bad.write_text("faults: {pump_laser: explode}\n")
    with pytest.raises(TestbedError, match="explode"):
        TestbedConfig.load(bad)
    bad.write_text("instruments:\n  x: {driver: nope}\n")
    with pytest.raises(TestbedError, match="nope"):
        Testbed(TestbedConfig.load(bad))


def test_rates_rise_with_pump_current_as_the_model_says(testbed):
    testbed.set_pump(0.030)
    low_expect = testbed.expected_rates()
    low = _read(testbed, 0.2)
    testbed.set_pump(0.060)
    high_expect = testbed.expected_rates()
    high = _read(testbed, 0.2)
    assert high_expect["pair_rate_hz"] / low_expect["pair_rate_hz"] == pytest.approx(4.0)
    delays = ph.channel_delays_ps(testbed.params)
    for batch, exp in ((low, low_expect), (high, high_expect)):
        dur = batch.duration_s if hasattr(batch, "duration_s") else batch.duration_ps * 1e-12
        singles = np.bincount(batch.channels, minlength=8) / dur
        # dead time takes a few percent at these rates
        assert singles[0] == pytest.approx(exp["singles_hz"][0], rel=0.08)
        coinc = coincidence_matrix(batch, delays, 1000)
        true_hh = exp["coincidences_hz"][0, 0]
        assert coinc[0, 4] / dur == pytest.approx(true_hh, rel=0.15)
    assert len(high) > 3 * len(low)
    # accidentals grow faster (quadratically) than true coincidences (linearly)
    off_low = coincidence_matrix(low, delays + np.array([0] * 4 + [50_000] * 4), 1000).sum()
    off_high = coincidence_matrix(high, delays + np.array([0] * 4 + [50_000] * 4), 1000).sum()
    assert off_high > 8 * max(off_low, 1)


def test_laser_output_off_leaves_only_dark_counts(testbed):
    testbed.set_pump(0.05, on=False)
    batch = _read(testbed, 0.1)
    assert testbed.pump_power_w() == 0.0
    assert len(batch) / 0.1 < 2 * testbed.dark_rates_hz().sum() + 100


def test_qber_follows_imposed_rotation_and_controller_compensates(testbed):
    testbed.set_pump(0.08)
    delays = ph.channel_delays_ps(testbed.params)
    qz0, qx0, rep = qber(_read(testbed, 0.3), delays)
    assert rep.z.sifted > 2000
    assert qz0 == pytest.approx(0.01, abs=0.006) and qx0 == pytest.approx(0.01, abs=0.006)
    testbed.impose_rotation((0.0, 0.9, 0.0))
    want_z, want_x = testbed.expected_rates()["qber_z"], testbed.expected_rates()["qber_x"]
    qz1, qx1, _ = qber(_read(testbed, 0.3), delays)
    assert want_z > 0.15
    assert qz1 == pytest.approx(want_z, abs=0.03) and qx1 == pytest.approx(want_x, abs=0.03)
    testbed.set_compensator_voltages(testbed.compensating_voltages())
    qz2, qx2, _ = qber(_read(testbed, 0.3), delays)
    assert qz2 == pytest.approx(0.01, abs=0.006) and qx2 == pytest.approx(0.01, abs=0.006)


def test_polarization_drift_raises_qber_over_time():
    tb = Testbed(make_config(**{"physics.bob.drift_rad_per_sqrt_s": 1.0}))
    q_start = tb.expected_rates()["qber_z"]
    _read(tb, 1.0)
    q_late = max(tb.expected_rates()["qber_z"], tb.expected_rates()["qber_x"])
    assert q_late > q_start + 0.02
    tb.set_drift(0.0)
    u = tb.u_fiber.copy()
    _read(tb, 0.1)
    assert np.allclose(u, tb.u_fiber)


def test_latched_snspd_stops_counting_until_reset(testbed):
    def ch0_rate():
        b = _read(testbed, 0.05)
        return np.sum(b.channels == 0) / 0.05, np.sum(b.channels == 1) / 0.05

    on0, on1 = ch0_rate()
    assert on0 > 10_000
    testbed.set_bias(0, 22e-6)  # above the 20 uA critical current: latches
    assert testbed.latched()[0]
    assert ch0_rate()[0] == 0 and ch0_rate()[1] > 0.5 * on1
    testbed.set_bias(0, 16e-6)  # back to the working point: still latched
    assert ch0_rate()[0] == 0
    smu = testbed.emulators["snspd_bias"]
    assert smu.voltage() > 0.05
    testbed.set_bias(0, 0.0)  # the reset sequence: bias to 0, then back
    testbed.set_bias(0, 16e-6)
    assert not testbed.latched()[0]
    assert ch0_rate()[0] == pytest.approx(on0, rel=0.1)


def test_spad_module_reports_the_model_rate_and_can_be_switched_off(testbed):
    spad = testbed.emulators["spad"]
    reported = int(spad.handle("COUNTERS:DETECTION_FREQ?"))
    exp = testbed.expected_rates()["singles_hz"][4]
    assert reported == pytest.approx(ph.dead_time_rate_hz(exp, 100_000), rel=1e-3)
    # the module's dead time is the model's: 1 us cuts channel 4's measured rate
    spad.handle("DEADTIME:TIME 1000")
    b = _read(testbed, 0.2)
    t4 = b.timestamps[b.channels == 4]
    assert np.diff(t4).min() >= 1_000_000
    exp_1us = ph.dead_time_rate_hz(exp, 1_000_000)
    assert int(spad.handle("COUNTERS:DETECTION_FREQ?")) == pytest.approx(exp_1us, rel=1e-3)
    assert t4.size / 0.2 == pytest.approx(exp_1us, rel=0.1)
    spad.handle("REG:RUN FALSE")
    _read(testbed, 0.01)  # photons already in flight (and their afterpulses) still land
    assert np.sum(_read(testbed, 0.05).channels == 4) == 0
    assert int(spad.handle("COUNTERS:DETECTION_FREQ?")) == 0


def test_power_meter_reads_the_pump_tap(testbed):
    testbed.set_pump(0.05)
    pm = testbed.emulators["power_meter"]
    assert float(pm.handle("MEAS:POW?")) == pytest.approx(0.5 * 0.03 * 0.01, rel=1e-5)


def test_peak_sits_where_the_fiber_length_puts_it(testbed):
    batch = _read(testbed, 0.3)
    ta = batch.timestamps[batch.channels == 0]
    tb = batch.timestamps[batch.channels == 4]
    est = find_delay(ta, tb, max_delay_ps=50_000_000, resolution_ps=100)
    expected = ph.fiber_delay_ps(testbed.params.bob) - ph.fiber_delay_ps(testbed.params.alice)
    assert abs(est.delay_ps - expected) <= 100


def test_same_config_and_actions_give_the_same_stream():
    def run():
        tb = Testbed(make_config())
        a = _read(tb, 0.05)
        tb.set_pump(0.07)
        tb.impose_rotation((0.3, 0.0, 0.1))
        return TagBatch.concatenate([a, _read(tb, 0.05)])

    x, y = run(), run()
    assert np.array_equal(x.timestamps, y.timestamps) and np.array_equal(x.channels, y.channels)
    z = Testbed(make_config(seed=5))
    assert not np.array_equal(_read(z, 0.05).timestamps[:50], x.timestamps[:50])


def test_two_taggers_offset_and_drift_are_recovered():
    cfg = make_config(
        **{
            "physics.clocks.mode": "two_taggers",
            "physics.clocks.offset_ps": 3_000_000,
            "physics.clocks.drift_ppm": 5.0,
            "physics.bob.drift_rad_per_sqrt_s": 0.0,
            "initial.laser_current_a": 0.1,
        }
    )
    tb = Testbed(cfg)
    with pytest.raises(TestbedError, match="two_taggers"):
        tb.tag_source("both")
    sa, sb = tb.tag_source("alice", speed=0), tb.tag_source("bob", speed=0)
    a = TagBatch.concatenate([sa.read() for _ in range(100)])
    b = TagBatch.concatenate([sb.read() for _ in range(100)])
    assert sa.n_channels == 4 and b.channels.max() <= 3
    assert b.begin_ps == tb.bob_clock(a.begin_ps)
    fiber = ph.fiber_delay_ps(tb.params.bob)
    fit = track_drift(
        a.timestamps[a.channels == 0],
        b.timestamps[b.channels == 0],
        window_ps=100_000_000_000,
        max_delay_ps=20_000_000,
        resolution_ps=100,
    )
    assert fit.drift_ppm == pytest.approx(5.0, abs=0.2)
    assert fit.offset_at(0) == pytest.approx(3_000_000 + fiber, abs=300)


def test_paced_source_follows_the_wall_clock():
    tb = Testbed(make_config(speed=2.0))
    src = tb.tag_source("both")
    src.read(timeout_s=0.1)  # the pace starts at the first read
    t0 = time.monotonic()
    covered = 0
    while time.monotonic() - t0 < 0.3:
        covered += src.read(timeout_s=0.1).duration_ps
    elapsed = time.monotonic() - t0
    assert covered * 1e-12 == pytest.approx(2.0 * elapsed, abs=0.1)
    src.close()
    assert src.read() is None


def test_unread_backlog_overflows_but_the_stream_stays_contiguous(testbed, monkeypatch):
    from drivers.sim import testbed as tbmod

    monkeypatch.setattr(tbmod._Subscriber, "max_tags", 5_000)
    slow = testbed.tag_source("alice", speed=0)
    fast = testbed.tag_source("both", speed=0)
    parts = [fast.read() for _ in range(20)]
    backlog = slow.read()  # everything since it subscribed, as one contiguous batch
    assert (backlog.begin_ps, backlog.end_ps) == (parts[0].begin_ps, parts[-1].end_ps)
    assert 0 < len(backlog) <= 5_000 + 10_000  # old batches kept their interval, lost tags
    assert slow._sub.overflowed_tags > 0


def test_detector_without_smu_latches_through_the_model(testbed):
    testbed.set_bias(1, 25e-6)
    assert testbed.latched()[1] and testbed.efficiencies()[1] == 0.0
    testbed.set_bias(1, 16e-6)
    assert testbed.latched()[1]
    testbed.set_bias(1, 0.0)
    testbed.set_bias(1, 16e-6)
    assert not testbed.latched()[1] and testbed.efficiencies()[1] > 0.5


def test_refused_pump_current_raises_and_leaves_no_error_in_the_queue(testbed):
    laser = testbed.emulators["pump_laser"]
    before = (laser.current_setpoint_a, laser.output_on)
    laser.handle("SOUR1:CURR 9")  # the operator's own refused command: its error stays queued
    with pytest.raises(TestbedError, match=r"'pump_laser' refused pump current 2\.0 A"):
        testbed.set_pump(2.0)
    assert (laser.current_setpoint_a, laser.output_on) == before
    assert laser.handle("SYST:ERR?").startswith("-222")  # the operator's error only
    assert laser.handle("SYST:ERR?") == '0,"No error"'
    with pytest.raises(TestbedError, match="finite"):
        testbed.set_pump(float("nan"))
    testbed.set_pump(0.04)
    assert laser.current_setpoint_a == pytest.approx(0.04) and laser.output_on


def test_refused_bias_raises_and_leaves_no_error_in_the_queue(testbed):
    smu = testbed.emulators["snspd_bias"]
    before = smu.bias_current_a
    with pytest.raises(TestbedError, match=r"'snspd_bias' refused bias 2\.0 A on channel 0"):
        testbed.set_bias(0, 2.0)
    assert smu.bias_current_a == before and not testbed.latched()[0]
    assert smu.handle(":SYST:ERR?") == '0,"No error"'
    with pytest.raises(TestbedError, match=r"channel 9 is not in 0\.\.7"):
        testbed.set_bias(9, 16e-6)


def test_compensator_voltages_are_all_checked_before_any_is_sent(testbed):
    comp = testbed.compensator
    before, n_commands = list(comp.counts), len(comp.commands)
    with pytest.raises(TestbedError, match=r"element 3 voltage -1 V is outside 0\.\.10 V"):
        testbed.set_compensator_voltages([1, 2, -1, 0])
    with pytest.raises(TestbedError, match=r"element 2 voltage 10\.5 V"):
        testbed.set_compensator_voltages([1, 10.5, 1, 1])
    with pytest.raises(TestbedError, match="takes 4 voltages"):
        testbed.set_compensator_voltages([1, 2, 3])
    with pytest.raises(TestbedError, match="element 1 voltage nan V"):
        testbed.set_compensator_voltages([float("nan"), 1, 1, 1])
    assert comp.counts == before and len(comp.commands) == n_commands  # nothing was sent
    testbed.set_compensator_voltages([1, 2, 0, 10])
    assert comp.setpoints == pytest.approx([1, 2, 0, 10], abs=1 / comp.COUNTS_PER_V)


def test_speed_0_config_runs_the_clock_and_served_frames_at_real_time():
    cfg = make_config(speed=0.0)
    tb = Testbed(cfg)
    try:
        assert tb.clock_speed == 1.0
        assert tb.emulators["time_tagger"].frame_duration_ps == round(cfg.chunk_s * 1e12)
        t0 = tb.sim_time_ps
        tb.start_clock()  # used to raise: the default took speed 0 as is
        deadline = time.monotonic() + 5
        while tb.sim_time_ps == t0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert tb.sim_time_ps > t0
        with pytest.raises(TestbedError, match="clock speed must be finite and > 0"):
            tb.start_clock(0)  # an explicit 0 is still refused
    finally:
        tb.stop()
    fast = Testbed(make_config(speed=2.0))
    assert fast.clock_speed == 2.0
    assert fast.emulators["time_tagger"].frame_duration_ps == round(2 * cfg.chunk_s * 1e12)


def test_one_emulator_table_builds_every_configured_instrument(testbed):
    from drivers.sim import instruments
    from drivers.sim import testbed as testbed_module

    assert testbed_module.EMULATORS is instruments.EMULATORS
    for name, spec in testbed.config.instruments.items():
        assert type(testbed.emulators[name]) is instruments.EMULATORS[spec.driver]


def test_smu_and_model_detectors_latch_by_one_rule(testbed):
    """A detector on the served SMU (ch 0) and one on the model only (ch 1) agree at the
    edges: at exactly I_c both latch; at reset_current_a (not only at 0 A) both clear."""
    det = testbed._det[0]
    for ch in (0, 1):
        testbed.set_bias(ch, det.critical_current_a)
        assert testbed.latched()[ch], ch
        testbed.set_bias(ch, det.reset_current_a)
        testbed.set_bias(ch, 16e-6)
        assert not testbed.latched()[ch], ch


def test_sim_time_after_a_control_change_is_past_the_step_being_generated(testbed, monkeypatch):
    """A step reads the controls when it starts: the clock a reader sees after a change
    must not fall inside a step generated with the old controls (CI: QBER 3.7 % after a
    compensation because 10 ms of the window still carried the rotation)."""
    started, go = threading.Event(), threading.Event()
    real_step = testbed.generator.step

    def slow_step(*args, **kwargs):
        started.set()
        assert go.wait(10.0)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(testbed.generator, "step", slow_step)
    before = testbed.sim_time_ps
    step_ps = round(testbed.config.step_s * 1e12)
    worker = threading.Thread(target=testbed.advance, args=(step_ps,))
    worker.start()
    assert started.wait(10.0)
    # the controller's setpoint lands mid-step, as over its socket: the step in progress
    # already uses the old voltages
    assert testbed.compensator.handle("ld:1,30000") == "ld:1,30000"
    seen: list[int] = []
    reader = threading.Thread(target=lambda: seen.append(testbed.sim_time_ps))
    reader.start()
    time.sleep(0.2)
    go.set()
    reader.join(10.0)
    worker.join(10.0)
    assert seen == [before + step_ps]
