import numpy as np
import pytest

from coincidence import CoincidenceCounter, CoincidenceError, generate_pairs

MS = 10**9


def make(**kw):
    args = dict(
        duration_ps=100 * MS,
        pair_rate_hz=1e5,
        noise_rate_hz=[2e5, 3e5, 0.0],
        n_channels=3,
        pair_channels=[(0, 1), (0, 2)],
        delays_ps=[0, 20_000, -30_000],
        jitter_ps=40.0,
        seed=4,
        begin_ps=7 * MS,
    )
    args.update(kw)
    return generate_pairs(**args)


def test_seeded_sorted_and_covering_the_interval():
    a, b = make(), make()
    assert np.array_equal(a.timestamps, b.timestamps) and np.array_equal(a.channels, b.channels)
    assert not np.array_equal(make(seed=5).timestamps[:50], a.timestamps[:50])
    assert (a.begin_ps, a.end_ps) == (7 * MS, 107 * MS)
    assert np.all(np.diff(a.timestamps) >= 0)
    assert a.timestamps[0] >= a.begin_ps and a.timestamps[-1] < a.end_ps


def test_rates_and_pairs_land_at_their_delays():
    batch = make()
    singles = np.bincount(batch.channels, minlength=3)
    # pairs 1e4 in 0.1 s, half on each pair; noise 2e4 / 3e4 / 0
    expected = np.array([1e4 + 2e4, 0.5e4 + 3e4, 0.5e4])
    assert np.all(np.abs(singles - expected) < 5 * np.sqrt(expected))
    rep = CoincidenceCounter(3, 400, [0, 20_000, -30_000])
    rep.process(batch)
    m = rep.result().coincidences
    # jitter 40 ps per tag: nearly every pair within +-200 ps
    assert m[0, 1] == pytest.approx(5e3, rel=0.1) and m[0, 2] == pytest.approx(5e3, rel=0.1)
    assert m[1, 2] < 10


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        (dict(pair_rate_hz=-1.0), "pair_rate_hz"),
        (dict(noise_rate_hz=[1.0, np.nan, 1.0]), r"noise_rate_hz\[1\]"),
        (dict(delays_ps=[0, 1]), "delays_ps needs 3 entries"),
        (dict(pair_channels=[(0, 3)]), "outside 0..2"),
        (dict(pair_channels=[]), "at least one pair channel"),
        (dict(duration_ps=-1), "duration_ps must be >= 0"),
        (dict(jitter_ps=-1.0), "jitter_ps"),
    ],
)
def test_bad_arguments_are_named(kw, msg):
    with pytest.raises(CoincidenceError, match=msg):
        make(**kw)


def test_noise_rate_of_wrong_length_is_named():
    for rates in ([1.0, 2.0], [1.0, 2.0, 3.0, 4.0], [[1.0, 2.0, 3.0]]):
        with pytest.raises(CoincidenceError, match=r"noise_rate_hz needs one rate or 3 \(one per"):
            make(noise_rate_hz=rates)
    assert len(make(noise_rate_hz=[2e5])) == len(make(noise_rate_hz=2e5))
