"""The testbed served over loopback sockets, driven by qnet's REAL drivers (issue "done when").

Every instrument of the sim node (plus Bob's tagger) is served on a free loopback
port; the real drivers connect through pyvisa-py / pyserial exactly as to the
bench. Tags arrive through the real ID1000 driver's stream (both taggers share
one clock in this config), merged to the 8-channel stream Alice H,V,D,A + Bob H,V,D,A.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import yaml

from coincidence import TagBatch, find_delay
from drivers import InstrumentError, InstrumentTimeout, make_instrument, with_port
from drivers.sim import free_port
from drivers.sim import physics as ph
from drivers.sim.testbed import Testbed

from .conftest import REPO, coincidence_matrix, make_config, qber

NODE = yaml.safe_load((REPO / "configs" / "sim-node.yaml").read_text())["instruments"]
SPEED = 10.0  # simulated seconds per wall second on the served streams


@pytest.fixture(scope="module")
def bench():
    raw = make_config(
        speed=SPEED, chunk_s=0.01, **{"physics.bob.drift_rad_per_sqrt_s": 0.0}
    ).model_dump()
    for spec in raw["instruments"].values():
        spec["resource"] = with_port(spec["resource"], free_port())
        if spec.get("stream_port"):
            spec["stream_port"] = free_port()
    from drivers.sim.testbed import TestbedConfig

    tb = Testbed(TestbedConfig.model_validate(raw))
    served = tb.serve()
    assert set(NODE) <= set(served)  # every instrument the sim node lists is served
    drivers = {}
    for name, spec in tb.config.instruments.items():
        node = NODE.get(name, NODE["time_tagger"])
        options = dict(node.get("options") or {})
        if spec.stream_port:
            options["stream_port"] = spec.stream_port
        inst = make_instrument(
            name,
            spec.driver,
            spec.resource,
            timeout_s=1.0,
            limits={k: tuple(v) for k, v in (node.get("limits") or {}).items()},
            options=options or None,
        )
        inst.connect()
        drivers[name] = inst
    streams = []
    for name in ("time_tagger", "bob_tagger"):
        drivers[name].set_streaming(True)
        streams.append(drivers[name].tag_source())
    yield tb, drivers, streams
    for s in streams:
        s.close()
    for d in drivers.values():
        d.close()
    tb.stop()


def _collect(tb, streams, sim_s: float, timeout_s: float = 20.0) -> TagBatch:
    """The merged 8-channel stream over ``sim_s`` simulated seconds from now on."""
    start = tb.sim_time_ps + 20_000_000  # past everything generated so far (+ fiber lead)
    stop = start + round(sim_s * 1e12)
    parts: list[list[TagBatch]] = [[], []]
    deadline = time.monotonic() + timeout_s
    for k, src in enumerate(streams):
        while not parts[k] or parts[k][-1].end_ps < stop:
            assert time.monotonic() < deadline, "stream too slow"
            b = src.read(timeout_s=1.0)
            assert b is not None
            if b.end_ps > start and len(b) + b.duration_ps > 0:
                parts[k].append(b)
    # a tagger's stream starts at its first frame: use the common stretch
    start = max(start, parts[0][0].begin_ps, parts[1][0].begin_ps)
    assert stop - start > 0.5 * sim_s * 1e12
    cut = []
    for k in range(2):
        whole = TagBatch.concatenate(parts[k])
        _, tail = whole.split(max(start, whole.begin_ps))
        head, _ = tail.split(stop)
        cut.append(head)
    a, b = cut
    assert a.begin_ps == b.begin_ps == start and a.end_ps == b.end_ps == stop
    return TagBatch.sorted(
        np.concatenate([a.timestamps, b.timestamps]),
        np.concatenate([a.channels, b.channels + 4]).astype(np.uint8),
        start,
        stop,
    )


def _counts(batch: TagBatch, delays_ps):
    """Singles (8) and the Alice x Bob coincidence matrix, via the core's counter if present."""
    try:
        from coincidence import CoincidenceCounter
    except ImportError:  # the re-export may not be there yet
        try:
            from coincidence import CoincidenceCounter
        except ImportError:
            return (
                np.bincount(batch.channels, minlength=8),
                coincidence_matrix(batch, delays_ps, 1000),
            )
    counter = CoincidenceCounter(8, 1000, delays_ps)
    counter.process(batch)
    rep = counter.result()
    m = np.zeros((8, 8), np.int64)
    m[:4, 4:] = rep.coincidences[:4, 4:]
    return rep.singles, m


def test_pump_current_raises_singles_and_coincidences_as_the_model_says(bench):
    tb, drv, streams = bench
    laser = drv["pump_laser"]
    delays = ph.channel_delays_ps(tb.params)
    measured = []
    for current in (0.030, 0.060):
        laser.current_setpoint_a = current
        laser.laser_on = True
        assert laser.current_a == pytest.approx(current)
        batch = _collect(tb, streams, 0.3)
        singles, coinc = _counts(batch, delays)
        dur = batch.duration_ps * 1e-12
        exp = tb.expected_rates()
        assert singles[0] / dur == pytest.approx(exp["singles_hz"][0], rel=0.08)
        assert coinc[0, 4] / dur == pytest.approx(exp["coincidences_hz"][0, 0], rel=0.15)
        measured.append((singles.sum() / dur, coinc.sum() / dur))
    # 10 mA -> 40 mA above threshold: pairs x4; singles and coincidences rise with them
    assert measured[1][0] > 3.0 * measured[0][0]
    assert measured[1][1] > 3.0 * measured[0][1]
    pm = drv["power_meter"]
    assert pm.power_w == pytest.approx(0.5 * 0.04 * 0.01, rel=1e-4)
    # the time controller's input counters follow the model too (counts per 1 s, with
    # Poisson shot noise: within 6 standard deviations)
    counters = drv["time_tagger"].counters()
    want = ph.dead_time_rate_hz(tb.expected_rates()["singles_hz"][0], 50_000)
    assert counters[0] == pytest.approx(want, abs=6 * want**0.5)


def test_delay_found_by_the_core_matches_the_fiber_length(bench):
    tb, _, streams = bench
    batch = _collect(tb, streams, 0.3)
    est = find_delay(
        batch.timestamps[batch.channels == 0],
        batch.timestamps[batch.channels == 4],
        max_delay_ps=50_000_000,
        resolution_ps=100,
    )
    expected = ph.fiber_delay_ps(tb.params.bob) - ph.fiber_delay_ps(tb.params.alice)
    assert expected == pytest.approx(9.79e6, rel=1e-3)  # 2 km at n_g 1.468
    assert abs(est.delay_ps - expected) <= 100  # within one bin


def test_qber_follows_rotation_until_the_controller_compensates(bench):
    tb, drv, streams = bench
    drv["pump_laser"].current_setpoint_a = 0.08
    delays = ph.channel_delays_ps(tb.params)
    qz, qx, _ = qber(_collect(tb, streams, 0.3), delays)
    assert qz < 0.025 and qx < 0.025
    tb.impose_rotation((0.5, 0.8, 0.0))
    want = tb.expected_rates()
    qz, qx, _ = qber(_collect(tb, streams, 0.3), delays)
    assert want["qber_z"] > 0.15
    assert qz == pytest.approx(want["qber_z"], abs=0.03)
    assert qx == pytest.approx(want["qber_x"], abs=0.03)
    drv["polarization_controller"].setpoints = tb.compensating_voltages()
    qz, qx, _ = qber(_collect(tb, streams, 0.3), delays)
    assert qz < 0.025 and qx < 0.025


def test_latched_snspd_stops_counting_until_the_reset_sequence(bench):
    tb, drv, streams = bench
    smu = drv["snspd_bias"]
    drv["pump_laser"].current_setpoint_a = 0.05
    before = np.sum(_collect(tb, streams, 0.1).channels == 0)
    assert before > 1000 and not smu.latched()
    smu.bias_current_a = 22e-6  # over the 20 uA critical current
    assert smu.latched()
    smu.bias_current_a = 16e-6  # back at the working point: still latched, still dark
    b = _collect(tb, streams, 0.1)
    assert np.sum(b.channels == 0) == 0 and np.sum(b.channels == 1) > 1000
    assert smu.reset_latch()  # bias to 0, wait, ramp back
    after = np.sum(_collect(tb, streams, 0.1).channels == 0)
    assert after == pytest.approx(before, rel=0.1)


def test_spad_module_and_fault_injection(bench):
    tb, drv, _ = bench
    spad = drv["spad"]
    exp = ph.dead_time_rate_hz(tb.expected_rates()["singles_hz"][4], 100_000)
    assert spad.count_rate_hz == pytest.approx(exp, rel=0.01)
    pm = drv["power_meter"]
    tb.inject_fault("power_meter", "timeout")
    with pytest.raises(InstrumentTimeout):
        _ = pm.power_w
    tb.inject_fault("power_meter", "none")
    time.sleep(0.2)
    for _ in range(50):  # the driver reconnects after its backoff
        try:
            assert pm.power_w > 0
            break
        except InstrumentError:
            time.sleep(0.1)
    else:
        pytest.fail("power meter did not come back")


def test_two_taggers_served_offset_and_drift_found_by_the_core():
    """Two independently clocked taggers over the real driver streams: track_drift recovers
    Bob's clock offset + fiber delay and the ppm drift the config imposes."""
    from coincidence import track_drift
    from drivers.sim.testbed import TestbedConfig

    raw = make_config(
        speed=20.0,
        **{
            "physics.clocks.mode": "two_taggers",
            "physics.clocks.offset_ps": 2_000_000,
            "physics.clocks.drift_ppm": -3.0,
            "physics.bob.drift_rad_per_sqrt_s": 0.0,
            "initial.laser_current_a": 0.08,
        },
    ).model_dump()
    keep = {"time_tagger", "bob_tagger"}
    raw["instruments"] = {k: v for k, v in raw["instruments"].items() if k in keep}
    for spec in raw["instruments"].values():
        spec["resource"] = with_port(spec["resource"], free_port())
        spec["stream_port"] = free_port()
    tb = Testbed(TestbedConfig.model_validate(raw))
    tb.serve()
    taggers, streams = [], []
    try:
        for name in ("time_tagger", "bob_tagger"):
            spec = tb.config.instruments[name]
            d = make_instrument(
                name,
                spec.driver,
                spec.resource,
                timeout_s=1.0,
                options={"stream_port": spec.stream_port},
            )
            d.connect()
            d.set_streaming(True)
            taggers.append(d)
            streams.append(d.tag_source())
        got = [[], []]
        deadline = time.monotonic() + 30
        for k, src in enumerate(streams):
            while sum(b.duration_ps for b in got[k]) < 2 * 10**12:
                assert time.monotonic() < deadline
                got[k].append(src.read(timeout_s=1.0))
        a, b = (TagBatch.concatenate(g) for g in got)
    finally:
        for s in streams:
            s.close()
        for d in taggers:
            d.close()
        tb.stop()
    fit = track_drift(
        a.timestamps[a.channels == 0],
        b.timestamps[b.channels == 0],
        window_ps=200_000_000_000,
        max_delay_ps=30_000_000,
        resolution_ps=100,
    )
    fiber = ph.fiber_delay_ps(tb.params.bob)
    assert fit.drift_ppm == pytest.approx(-3.0, abs=0.2)
    t_mid = int(a.timestamps[len(a) // 2])
    true_offset = tb.bob_clock(t_mid) - t_mid + fiber
    assert fit.offset_at(t_mid) == pytest.approx(true_offset, abs=500)
