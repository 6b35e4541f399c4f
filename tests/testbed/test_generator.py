"""The Numba tag generator: ordering, contiguity, dead time, afterpulses, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from coincidence import TagBatch
from drivers.sim import physics as ph
from drivers.sim.tags import TagGenerator


def _tables(pair_rate=2e6, eff=0.8):
    joint = ph.joint_detector_probabilities(np.eye(2), ph.SourceParams())
    return ph.event_classes(pair_rate, joint, 0.5, 0.5, np.full(8, eff))


def _gen(dead=50_000, ap=0.0, jitter=50.0, delays=None):
    delays = (
        np.array([0, 100, 200, 300, 9_000_000, 9_000_100, 9_000_200, 9_000_300])
        if delays is None
        else delays
    )
    return TagGenerator(
        delays, np.full(8, jitter), np.full(8, dead), np.full(8, ap), np.full(8, 1e5)
    )


def _run(gen, n_steps=20, step_ps=10**9, seed0=0, **kw):
    rate, cum, a, b = _tables(**kw)
    out = []
    for k in range(n_steps):
        ts, ch, b0, b1 = gen.step(seed0 + k, step_ps, rate, cum, a, b, np.full(8, 1e3))
        out.append(TagBatch(ts, ch, b0, b1))  # validates order and interval
    return out


def test_batches_are_sorted_contiguous_and_inside_their_interval():
    batches = _run(_gen())
    for prev, nxt in itertools.pairwise(batches):
        assert nxt.begin_ps == prev.end_ps
    whole = TagBatch.concatenate(batches)
    assert len(whole) > 10_000
    assert np.all(whole.timestamps >= whole.begin_ps) and np.all(whole.timestamps < whole.end_ps)


def test_dead_time_is_respected_per_channel_across_steps():
    dead = 400_000  # 400 ns at ~0.8 Mcps per channel: many would-be violations
    whole = TagBatch.concatenate(_run(_gen(dead=dead), pair_rate=5e6))
    for c in range(8):
        t = whole.timestamps[whole.channels == c]
        assert t.size > 1000
        assert np.diff(t).min() >= dead


def test_dead_time_loss_matches_non_paralyzable_model():
    dead = 1_000_000
    whole = TagBatch.concatenate(_run(_gen(dead=dead, jitter=0.0), n_steps=10, pair_rate=4e6))
    true_rate = 4e6 * 0.5 * 0.8 / 4  # per channel
    meas = np.sum(whole.channels == 0) / (whole.duration_ps * 1e-12)
    assert meas == pytest.approx(ph.dead_time_rate_hz(true_rate, dead), rel=0.05)


def test_afterpulses_add_clicks_after_the_dead_time():
    base = TagBatch.concatenate(_run(_gen(ap=0.0)))
    ap = TagBatch.concatenate(_run(_gen(ap=0.2)))
    ratio = len(ap) / len(base)
    assert 1.12 < ratio < 1.25  # ~ +20 % minus what falls in dead time / later steps


def test_same_seed_same_stream_other_seed_other_stream():
    a = TagBatch.concatenate(_run(_gen(ap=0.05)))
    b = TagBatch.concatenate(_run(_gen(ap=0.05)))
    c = TagBatch.concatenate(_run(_gen(ap=0.05), seed0=1000))
    assert np.array_equal(a.timestamps, b.timestamps) and np.array_equal(a.channels, b.channels)
    assert not np.array_equal(a.timestamps[:100], c.timestamps[:100])


def test_coincidence_peak_sits_at_the_channel_delay_difference():
    whole = TagBatch.concatenate(_run(_gen(jitter=20.0)))
    ta = whole.timestamps[whole.channels == 0]
    tb = whole.timestamps[whole.channels == 4]

    def count(delay):
        lo = np.searchsorted(tb, ta + delay - 200)
        hi = np.searchsorted(tb, ta + delay + 200)
        return int(np.sum(hi - lo))

    on_peak, off_peak = count(9_000_000), count(9_050_000)
    assert on_peak > 500
    assert on_peak > 20 * max(off_peak, 1)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="delays_ps must have 8"):
        TagGenerator(np.zeros(3), np.zeros(8), np.zeros(8), np.zeros(8), np.zeros(8))
    with pytest.raises(ValueError, match="afterpulse_probability"):
        TagGenerator(np.zeros(8), np.zeros(8), np.zeros(8), np.full(8, 2.0), np.zeros(8))
    gen = _gen()
    rate, cum, a, b = _tables()
    with pytest.raises(ValueError, match="duration_ps"):
        gen.step(0, 0, rate, cum, a, b, np.zeros(8))
    with pytest.raises(ValueError, match="class channels"):
        gen.step(0, 10, rate, cum, a + 20, b, np.zeros(8))
