"""g2(tau) and the heralded g2(0) against a Poisson source and a single-photon emitter."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coincidence import (
    CoincidenceCounter,
    CoincidenceError,
    CorrelationHistogram,
    HeraldedG2Counter,
    TagBatch,
    g2_zero,
    generate_poisson_light,
    generate_pulsed_source,
    heralded_g2_zero,
    window_lags,
)

MS = 10**9


def test_poisson_light_has_g2_one_at_every_lag() -> None:
    batch = generate_poisson_light(duration_ps=200 * MS, rates_hz=[2e6, 3e6], seed=1)
    hist = CorrelationHistogram(0, 1, 1_000, 50_000)
    hist.process(batch)
    curve = hist.result().g2()
    assert curve.tau_ps.size == 100 and curve.bin_width_ps == 1_000
    pulls = (curve.g2 - 1.0) / curve.g2_err
    assert abs(pulls.mean()) < 0.5 and 0.7 < pulls.std() < 1.3  # errors are right too
    assert abs(curve.g2.mean() - 1.0) < 0.01
    # C T / (N_a N_b dtau), by hand for one bin
    rep = hist.result()
    k = 37
    assert curve.g2[k] == pytest.approx(
        rep.counts[k] * rep.duration_ps / (rep.singles_a * rep.singles_b * 1_000)
    )


def test_poisson_pulsed_source_heralded_g2_is_one() -> None:
    batch = generate_pulsed_source(
        duration_ps=20 * MS, period_ps=12_500, mean_photons=0.3, statistics="poisson",
        efficiency=0.6, seed=2,
    )  # fmt: skip
    counter = HeraldedG2Counter(0, 1, 2, 1_000)
    counter.process(batch)
    res = counter.result()
    assert res.heralded and res.counts["n_hab"] > 1000
    assert abs(res.g2 - 1.0) < 4 * res.sigma and res.sigma < 0.05


def test_single_photon_emitter_has_g2_zero_near_zero() -> None:
    batch = generate_pulsed_source(
        duration_ps=20 * MS, period_ps=12_500, mean_photons=0.5, statistics="single",
        efficiency=0.6, dark_rate_hz=500.0, seed=3,
    )  # fmt: skip
    counter = HeraldedG2Counter(0, 1, 2, 1_000)
    counter.process(batch)
    res = counter.result()
    assert res.counts["n_ha"] > 100_000 and res.g2 < 0.01 and res.sigma < 0.01
    # the two-fold g2(0) in the window is near 0 too, and the side peaks are not
    c = CoincidenceCounter(3, 1_000)
    c.process(batch)
    r = c.result()
    two = g2_zero(int(r.singles[1]), int(r.singles[2]), int(r.coincidences[1, 2]),
                  window_lags(1_000), r.duration_ps)  # fmt: skip
    assert two.g2 < 0.05
    hist = CorrelationHistogram(1, 2, 500, 20_000)
    hist.process(batch)
    curve = hist.result().g2()
    centre = curve.g2[np.abs(curve.tau_ps) < 600].max()
    side = curve.g2[np.abs(np.abs(curve.tau_ps) - 12_500) < 600].max()
    assert centre < 0.1 * side


@st.composite
def herald_streams(draw: st.DrawFn) -> tuple[TagBatch, int, tuple[int, int, int], list[int]]:
    window = draw(st.integers(1, 3_000))
    delays = tuple(draw(st.lists(st.integers(-5_000, 5_000), min_size=3, max_size=3)))
    tags = draw(st.lists(st.tuples(st.integers(0, 60_000), st.integers(0, 3)), max_size=60))
    ts = np.array([t for t, _ in tags], np.int64)
    ch = np.array([c for _, c in tags], np.int64)
    batch = TagBatch.sorted(ts, ch, 0, 60_001)
    cuts = draw(st.lists(st.integers(0, 60_001), max_size=6))
    return batch, window, delays, cuts  # type: ignore[return-value]


def herald_reference(batch: TagBatch, window: int, delays: tuple[int, int, int]) -> list[int]:
    s = [batch.timestamps[batch.channels == c] - delays[c] for c in range(3)]
    n = [len(s[0]), 0, 0, 0]
    for x in s[0]:
        a = int(np.sum(2 * np.abs(s[1] - x) <= window))
        b = int(np.sum(2 * np.abs(s[2] - x) <= window))
        n[1] += a
        n[2] += b
        n[3] += a * b
    return n


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(herald_streams())
def test_heralded_counts_match_brute_force_whatever_the_cuts(case: tuple) -> None:
    batch, window, delays, cuts = case
    want = herald_reference(batch, window, delays)
    counter = HeraldedG2Counter(0, 1, 2, window, delays)
    for part in batch.split_at(cuts):
        counter.process(part)
        counter.counts()  # leaves the state alone
    assert list(counter.counts().values()) == want


def test_heralded_formula_and_uncertainty() -> None:
    r = heralded_g2_zero(1000, 100, 200, 4)
    assert r.g2 == pytest.approx(1000 * 4 / (100 * 200))
    var = r.g2**2 * (1 / 1000 + 1 / 100 + 1 / 200) + (1000 / (100 * 200)) ** 2 * 4
    assert r.sigma == pytest.approx(np.sqrt(var))
    assert heralded_g2_zero(1000, 100, 200, 0).sigma > 0  # an empty count still has an error
    with pytest.raises(CoincidenceError, match="N_HA = 0"):
        heralded_g2_zero(10, 0, 5, 0)
    with pytest.raises(CoincidenceError, match="three different channels"):
        HeraldedG2Counter(0, 0, 2, 100)
