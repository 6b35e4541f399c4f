"""The two taggers' free clocks: signed offsets up to 1 s, +-100 ppm, phase noise."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coincidence import TagBatch
from drivers.sim.clocks import TaggerClock, common_shift_ps
from drivers.sim.physics import SiteClock
from drivers.sim.testbed import Testbed, TestbedError

from .conftest import make_config

TWO = {
    "physics.clocks.mode": "two_taggers",
    "physics.clocks.offset_ps": -1_000_000_000_000,  # Bob 1 s behind Alice
    "physics.clocks.drift_ppm": -100.0,
    "physics.clocks.alice": {"offset_ps": 400_000_000_000, "ppm": 60.0},
    "physics.clocks.bob_phase_noise_ps_per_sqrt_s": 50.0,
    "physics.bob.drift_rad_per_sqrt_s": 0.0,
    "initial.laser_current_a": 0.06,
}


def test_two_taggers_read_true_time_through_their_own_clocks():
    """Same seed: each site's tags are exactly its clock's reading of the shared-clock tags;
    a negative offset is shifted so that no tag is negative, the batches stay contiguous."""
    chunk = 10**10  # the same chunks in both runs: the generator's seeds follow them
    shared = Testbed(make_config(**{k: v for k, v in TWO.items() if "clocks" not in k}))
    truth = TagBatch.concatenate([shared.advance(chunk) for _ in range(60)])
    tb = Testbed(make_config(**TWO))
    subs = {side: tb.subscribe(side) for side in ("alice", "bob")}
    parts_a, parts_b = [], []
    for _ in range(60):
        tb.advance(chunk)
        parts_a += subs["alice"].drain()
        parts_b += subs["bob"].drain()
    for parts in (parts_a, parts_b):
        assert all(x.end_ps == y.begin_ps for x, y in itertools.pairwise(parts))
    a, b = TagBatch.concatenate(parts_a), TagBatch.concatenate(parts_b)
    assert tb.clock_shift_ps >= 600_000_000_000  # Bob's offset is -0.6 s against true time
    assert a.begin_ps >= 0 and b.begin_ps >= 0 and b.timestamps.min() >= 0
    ta = truth.timestamps[truth.channels < 4]
    tb_true = truth.timestamps[truth.channels >= 4]
    assert len(ta) > 100_000 and len(tb_true) > 10_000
    assert np.array_equal(a.timestamps, tb.alice_clock(ta))
    assert np.array_equal(b.timestamps, tb.bob_clock(tb_true))
    assert np.array_equal(b.channels, truth.channels[truth.channels >= 4] - 4)
    # what a clock sync must find: the configured offset and relative rate
    t = int(truth.end_ps)
    got = tb.clock_truth(t)
    ppm = (1 + (60 - 100) * 1e-6) / (1 + 60e-6) * 1e6 - 1e6
    assert got["ppm"] == pytest.approx(ppm, abs=1e-6)
    expect = -1_000_000_000_000 + t * -100e-6  # Bob runs 100 ppm slower than Alice
    assert got["offset_ps"] == pytest.approx(expect, abs=50 * 10 + 2)


def test_phase_noise_is_a_random_walk_of_the_configured_strength():
    sigma = 200.0
    clock = TaggerClock(SiteClock(phase_noise_ps_per_sqrt_s=sigma), 0, 10**11, seed=3)
    t = np.arange(0, 2_001) * 10**12  # every second for 2000 s
    w = clock.walk_ps(t)
    steps = np.diff(w)
    assert w[0] == 0.0
    assert np.std(steps) == pytest.approx(sigma, rel=0.1)  # 2000 samples: 1.6 % std error
    assert abs(np.mean(steps)) < 4 * sigma / math.sqrt(len(steps))
    # the same seed gives the same walk, whichever times are asked first
    again = TaggerClock(SiteClock(phase_noise_ps_per_sqrt_s=sigma), 0, 10**11, seed=3)
    assert again.walk_ps(t[-1:])[0] == w[-1]


@settings(max_examples=60, deadline=None)
@given(
    ppm=st.floats(-100.0, 100.0),
    noise=st.floats(0.0, 5_000.0),
    start=st.integers(0, 10**15),
    seed=st.integers(0, 2**31),
)
def test_clock_reading_never_runs_backwards(ppm, noise, start, seed):
    clock = TaggerClock(SiteClock(ppm=ppm, phase_noise_ps_per_sqrt_s=noise), 0, 10**8, seed)
    t = start + np.arange(0, 3 * 10**8, 997, dtype=np.int64)
    r = clock.read(t)
    assert np.all(np.diff(r) >= 0)


def test_shift_keeps_the_earliest_reading_non_negative():
    clocks = [SiteClock(offset_ps=-(10**12), phase_noise_ps_per_sqrt_s=1e4), SiteClock()]
    shift = common_shift_ps(clocks, 10**10)
    c = TaggerClock(clocks[0], shift, 10**10, seed=1)
    assert c.read(np.arange(0, 10**11, 10**7)).min() >= 0
    assert common_shift_ps([SiteClock(offset_ps=5), SiteClock()], 10**10) == 0


@pytest.mark.parametrize(
    ("key", "value", "where"),
    [
        ("physics.clocks.offset_ps", 2_000_000_000_000, "offset_ps"),
        ("physics.clocks.drift_ppm", 150.0, "drift_ppm"),
        ("physics.clocks.bob_phase_noise_ps_per_sqrt_s", -1.0, "phase_noise"),
    ],
)
def test_out_of_range_clocks_are_refused(key, value, where):
    with pytest.raises(Exception, match=where):
        make_config(**{key: value})


def test_two_taggers_still_refuse_the_shared_view():
    with pytest.raises(TestbedError, match="two_taggers"):
        Testbed(make_config(**TWO)).tag_source("both")
