import itertools
import math

import numpy as np
import pytest

from coincidence import (
    CoincidenceError,
    FiberLink,
    QkdInputError,
    RoleMap,
    bbm92_asymptotic,
    bbm92_finite,
    bbm92_finite_key_length,
    bbm92_key_rate,
    decoy_bb84,
    h2,
    max_distance_km,
    phase_error_upper_bound,
    qber_from_matrix,
)

ALICE = {"H": 0, "V": 1, "D": 2, "A": 3}
BOB = {"H": 4, "V": 5, "D": 6, "A": 7}


def sym(m):
    return m + m.T


# ---------------------------------------------------------------- h2


def test_h2_values():
    assert h2(0.0) == 0.0 and h2(1.0) == 0.0
    assert h2(0.5) == pytest.approx(1.0)
    assert h2(0.11) == pytest.approx(0.4999, abs=1e-3)
    assert h2(0.2) == pytest.approx(h2(0.8))
    assert h2(0.045) == pytest.approx(-0.045 * math.log2(0.045) - 0.955 * math.log2(0.955))
    for bad in (-0.01, 1.01, float("nan")):
        with pytest.raises(QkdInputError, match="probability in"):
            h2(bad)


# ---------------------------------------------------------------- QBER from a matrix


def test_known_answer_matrix():
    m = np.zeros((8, 8), np.int64)
    m[0, 4], m[1, 5], m[0, 5], m[1, 4] = 90, 80, 6, 4  # Z: HH VV HV VH
    m[2, 6], m[3, 7], m[2, 7], m[3, 6] = 70, 75, 3, 2  # X: DD AA DA AD
    m[0, 6], m[1, 7], m[2, 4], m[3, 5] = 40, 41, 42, 43  # basis mismatch: not sifted
    m[0, 1], m[4, 5] = 500, 600  # same-side pairs: ignored
    r = qber_from_matrix(sym(m), 10.0, RoleMap(ALICE, BOB, "phi+"))
    assert (r.z.sifted, r.z.errors) == (180, 10)
    assert (r.x.sifted, r.x.errors) == (150, 5)
    assert r.qber_z == pytest.approx(10 / 180)
    assert r.qber_x == pytest.approx(5 / 150)
    assert r.z.sifted_rate_hz == pytest.approx(18.0)
    assert r.sifted == 330 and r.sifted_rate_hz == pytest.approx(33.0)
    assert r.duration_s == 10.0
    # triangular input (each pair counted once) gives the same answer
    r2 = qber_from_matrix(m, 10.0, RoleMap(ALICE, BOB, "phi+"))
    assert (r2.z, r2.x) == (r.z, r.x)
    # the same data read as psi-: every "right" pair becomes an error
    r3 = qber_from_matrix(sym(m), 10.0, RoleMap(ALICE, BOB, "psi-"))
    assert (r3.z.errors, r3.x.errors) == (170, 145)


# expected right outcome pairs per Bell state, written out independently of the code
RIGHT = {
    "phi+": {("H", "H"), ("V", "V"), ("D", "D"), ("A", "A")},
    "phi-": {("H", "H"), ("V", "V"), ("D", "A"), ("A", "D")},
    "psi+": {("H", "V"), ("V", "H"), ("D", "D"), ("A", "A")},
    "psi-": {("H", "V"), ("V", "H"), ("D", "A"), ("A", "D")},
}


@pytest.mark.parametrize("state", sorted(RIGHT))
def test_bell_state_conventions(state):
    m = np.zeros((8, 8), np.int64)
    for la, lb in RIGHT[state]:
        m[ALICE[la], BOB[lb]] = 100
    for assumed in RIGHT:
        r = qber_from_matrix(sym(m), 1.0, RoleMap(ALICE, BOB, assumed))
        assert r.z.sifted == 200 and r.x.sifted == 200
        z_ok = {p for p in RIGHT[state] if p[0] in "HV"} == {
            p for p in RIGHT[assumed] if p[0] in "HV"
        }
        x_ok = {p for p in RIGHT[state] if p[0] in "DA"} == {
            p for p in RIGHT[assumed] if p[0] in "DA"
        }
        assert r.qber_z == (0.0 if z_ok else 1.0)
        assert r.qber_x == (0.0 if x_ok else 1.0)


def test_per_basis_override():
    m = np.zeros((8, 8), np.int64)
    for la, lb in RIGHT["phi-"]:
        m[ALICE[la], BOB[lb]] = 50
    roles = RoleMap(ALICE, BOB, "phi+", correlation={"X": "anti"})
    r = qber_from_matrix(sym(m), 1.0, roles)
    assert r.qber_z == 0.0 and r.qber_x == 0.0
    assert (
        RoleMap.from_dict(
            {"alice": ALICE, "bob": BOB, "correlation": {"X": "anti-correlated"}}
        ).correlated("X")
        is False
    )


def test_single_basis_role_map_and_empty_basis():
    roles = RoleMap({"H": 0, "V": 1}, {"H": 2, "V": 3}, "psi-")
    m = np.zeros((4, 4), np.int64)
    m[0, 3], m[1, 2], m[0, 2] = 40, 50, 10
    r = qber_from_matrix(m, 2.0, roles)
    assert roles.bases == ("Z",)
    assert (r.z.sifted, r.z.errors) == (100, 10)
    assert r.x.sifted == 0 and math.isnan(r.qber_x)
    empty = qber_from_matrix(np.zeros((4, 4)), 1.0, roles)
    assert empty.z.sifted == 0 and math.isnan(empty.qber_z)


@pytest.mark.parametrize(
    ("alice", "bob", "state", "msg"),
    [
        ({"H": 0, "V": 1}, {"H": 2, "V": 0}, "phi+", "channel 0 is used twice"),
        ({"H": 0, "V": 0}, {"H": 2, "V": 3}, "phi+", "channel 0 is used twice"),
        ({"H": 0}, {"H": 2}, "phi+", "needs both H and V"),
        ({"H": 0, "V": 1, "X": 4}, {"H": 2, "V": 3}, "phi+", "unknown label 'X'"),
        ({"H": 0, "V": 1}, {"H": 2, "V": 3}, "phi0", "bell_state must be one of"),
        ({"H": 0, "V": -1}, {"H": 2, "V": 3}, "phi+", "non-negative channel"),
        ({"H": 0, "V": 1, "D": 4, "A": 5}, {"H": 2, "V": 3}, "phi+", "for alice only"),
    ],
)
def test_role_map_validation(alice, bob, state, msg):
    with pytest.raises(QkdInputError, match=msg):
        RoleMap(alice, bob, state)


def test_role_map_from_dict_validation():
    with pytest.raises(QkdInputError, match="unknown role-map keys"):
        RoleMap.from_dict({"alice": ALICE, "bob": BOB, "bell": "phi+"})
    with pytest.raises(QkdInputError, match="lacks 'bob'"):
        RoleMap.from_dict({"alice": ALICE})
    with pytest.raises(QkdInputError, match="expected 'correlated' or 'anti'"):
        RoleMap(ALICE, BOB, correlation={"Z": "maybe"})
    r = RoleMap.from_dict({"alice": ALICE, "bob": BOB, "bell_state": "psi+"})
    assert r.correlated("Z") is False and r.correlated("X") is True


def test_matrix_validation():
    roles = RoleMap(ALICE, BOB)
    with pytest.raises(QkdInputError, match="outside the 6x6"):
        qber_from_matrix(np.zeros((6, 6)), 1.0, roles)
    with pytest.raises(QkdInputError, match="square"):
        qber_from_matrix(np.zeros((8, 7)), 1.0, roles)
    with pytest.raises(QkdInputError, match="non-negative"):
        m = np.zeros((8, 8))
        m[0, 4] = -1
        qber_from_matrix(m, 1.0, roles)
    with pytest.raises(QkdInputError, match="duration_s must be positive"):
        qber_from_matrix(np.zeros((8, 8)), 0.0, roles)
    m = np.zeros((8, 8), np.int64)
    m[0, 4], m[4, 0] = 3, 5
    with pytest.raises(QkdInputError, match="symmetric or triangular"):
        qber_from_matrix(m, 1.0, roles)
    assert issubclass(QkdInputError, CoincidenceError)


# ---------------------------------------------------------------- BBM92


def test_micius_asymptotic_key_rate():
    # Yin et al., Nature 582, 501 (2020): sifted key rate 1.1 Hz, QBER about 4.5 %,
    # error-correction inefficiency f = 1.19, asymptotic secure key rate 0.43 bit/s
    # (text on p. 503-504, confirmed with the search tool). Our formula with E_bit =
    # E_phase = 4.5 % must land within 10 % of the published rate.
    r = bbm92_asymptotic(1.1, 0.045, 0.045, f_ec=1.19)
    assert r == pytest.approx(0.43, rel=0.10)


def test_micius_from_a_coincidence_matrix():
    # The Micius source emits psi+ = (HV + VH)/sqrt(2) (Yin et al. 2020): Z anti-correlated,
    # X correlated. 3100 s at 1.1 Hz sifted, 4.5 % errors in each basis, both bases distilled.
    duration = 3100.0
    per_basis = round(1.1 * duration / 2)
    err = round(0.045 * per_basis)
    m = np.zeros((8, 8), np.int64)
    m[0, 5] = m[1, 4] = (per_basis - err) // 2
    m[0, 4] = m[1, 5] = err // 2
    m[2, 6] = m[3, 7] = (per_basis - err) // 2
    m[2, 7] = m[3, 6] = err // 2
    r = qber_from_matrix(sym(m), duration, RoleMap(ALICE, BOB, "psi+"))
    assert r.qber_z == pytest.approx(0.045, abs=0.002)
    assert r.sifted_rate_hz == pytest.approx(1.1, rel=0.01)
    rate = bbm92_key_rate(r, f_ec=1.19, key_basis="both")
    assert rate == pytest.approx(0.43, rel=0.10)
    z_only = bbm92_key_rate(r, f_ec=1.19, key_basis="Z")
    assert z_only == pytest.approx(rate / 2, rel=0.02)
    # read with the wrong Bell state, the QBER is ~95 %: refused with a hint
    wrong = qber_from_matrix(sym(m), duration, RoleMap(ALICE, BOB, "phi+"))
    with pytest.raises(QkdInputError, match=r"> 0.5 in the Z basis.*bell_state"):
        bbm92_key_rate(wrong)


def test_bbm92_clips_and_validates():
    assert bbm92_asymptotic(1000.0, 0.12, 0.12, f_ec=1.0) == 0.0  # above 11 %
    assert bbm92_asymptotic(1000.0, 0.0, 0.0) == pytest.approx(1000.0)
    assert bbm92_asymptotic(0.0, 0.02, 0.02) == 0.0
    with pytest.raises(QkdInputError, match=r"e_bit must be a QBER in \[0, 0.5\]"):
        bbm92_asymptotic(1.0, 0.6, 0.01)
    with pytest.raises(QkdInputError, match="e_phase must be a QBER"):
        bbm92_asymptotic(1.0, 0.01, -0.01)
    with pytest.raises(QkdInputError, match="sifted_rate_hz must be a finite rate >= 0"):
        bbm92_asymptotic(-1.0, 0.01, 0.01)
    with pytest.raises(QkdInputError, match="f_ec must be >= 1"):
        bbm92_asymptotic(1.0, 0.01, 0.01, f_ec=0.9)
    with pytest.raises(QkdInputError, match="key_basis"):
        bbm92_key_rate(qber_from_matrix(np.zeros((8, 8)), 1.0, RoleMap(ALICE, BOB)), key_basis="Y")


def test_finite_phase_error_bound_properties():
    # shrinks towards the observed error as the blocks grow
    mus = [phase_error_upper_bound(0.03, n, n) - 0.03 for n in (10**3, 10**5, 10**7, 10**9)]
    assert all(x > y for x, y in itertools.pairwise(mus))
    assert mus[-1] < 1e-3
    # a smaller failure probability costs a larger deviation
    assert phase_error_upper_bound(0.03, 10**5, 10**5, 1e-15) > phase_error_upper_bound(
        0.03, 10**5, 10**5, 1e-5
    )
    assert phase_error_upper_bound(0.4, 100, 100) == 0.5
    with pytest.raises(QkdInputError, match="n_key and n_test must be positive"):
        phase_error_upper_bound(0.03, 0, 10)
    with pytest.raises(QkdInputError, match="eps_sec"):
        phase_error_upper_bound(0.03, 10, 10, eps_sec=0.0)


def test_finite_key_converges_to_asymptotic_and_vanishes_for_small_blocks():
    e = 0.03
    per_bit_asym = bbm92_asymptotic(1.0, e, e, f_ec=1.16)
    fractions = [
        bbm92_finite_key_length(n, e, n, e, f_ec=1.16) / n for n in (10**4, 10**6, 10**8, 10**11)
    ]
    assert all(f <= per_bit_asym for f in fractions)
    assert all(x <= y for x, y in itertools.pairwise(fractions))
    assert fractions[-1] == pytest.approx(per_bit_asym, rel=0.01)
    assert bbm92_finite_key_length(1000, e, 1000, e) == 0.0
    # rate form and monotonicity in epsilon
    n = 10**6
    assert bbm92_finite(n, e, n, e, 100.0) == pytest.approx(
        bbm92_finite_key_length(n, e, n, e) / 100.0
    )
    lengths = [bbm92_finite_key_length(n, e, n, e, eps_sec=eps) for eps in (1e-4, 1e-8, 1e-12)]
    assert lengths[0] > lengths[1] > lengths[2] > 0
    with pytest.raises(QkdInputError, match="duration_s"):
        bbm92_finite(n, e, n, e, 0.0)


# ---------------------------------------------------------------- decoy BB84


def test_gys_channel_model_numbers():
    g = FiberLink.gys()
    assert g.transmittance(0.0) == pytest.approx(0.045)
    assert g.transmittance(100.0) == pytest.approx(0.045 * 10 ** (-2.1))
    q = g.gain(0.5, 50.0)
    eta = 0.045 * 10 ** (-1.05)
    assert q == pytest.approx(1.7e-6 + 1 - math.exp(-0.5 * eta))
    assert g.qber(0.5, 0.0) == pytest.approx(0.033, abs=1e-4)  # detector error dominates
    assert g.qber(0.5, 400.0) == pytest.approx(0.5, abs=0.01)  # dark counts dominate


@pytest.mark.parametrize("distance", [0.0, 50.0, 100.0, 130.0])
def test_decoy_bounds_are_valid_bounds(distance):
    g = FiberLink.gys()
    y1, e1 = g.single_photon(distance)
    res = g.decoy(distance, mu=0.48, nu=0.05)
    assert 0 < res.y1_lower <= y1
    assert res.y1_lower == pytest.approx(y1, rel=0.05)
    assert e1 <= res.e1_upper <= 0.5
    assert res.key_rate_per_pulse <= g.asymptotic_rate(distance, mu=0.48)
    assert res.key_rate_per_pulse > 0


def test_ma_qi_zhao_lo_2005_cutoff_distances():
    # Ma, Qi, Zhao, Lo, Phys. Rev. A 72, 012326 (2005), GYS parameters (alpha 0.21 dB/km,
    # e_detector 3.3 %, Y0 1.7e-6, eta_Bob 4.5 %, f(E) = 1.22, q = 1/2): the key rate vs
    # distance with optimal mu reaches about 142 km in the asymptotic (infinitely many
    # decoys) case, and vacuum + weak decoy approaches that limit as nu -> 0. The figure
    # was taken from our reading of the paper (the search tool did not return its
    # figure text): tolerance +-3 km on the asymptotic cutoff.
    g = FiberLink.gys()
    asym = max_distance_km(g)
    assert asym == pytest.approx(142.0, abs=3.0)
    cut = [max_distance_km(g, nu=nu) for nu in (0.2, 0.1, 0.05, 0.01)]
    assert all(c < asym for c in cut)
    assert all(x < y for x, y in itertools.pairwise(cut))
    assert asym - cut[-1] < 1.0
    assert cut[1] > 135.0


def test_decoy_key_rate_and_validation():
    g = FiberLink.gys()
    kw = {
        "mu": 0.48,
        "nu": 0.05,
        "q_mu": g.gain(0.48, 20.0),
        "e_mu": g.qber(0.48, 20.0),
        "q_nu": g.gain(0.05, 20.0),
        "e_nu": g.qber(0.05, 20.0),
        "y0": g.y0,
    }
    res = decoy_bb84(**kw, rep_rate_hz=1e6)
    assert res.key_rate_bps == pytest.approx(res.key_rate_per_pulse * 1e6)
    assert res.raw_rate_per_pulse == res.key_rate_per_pulse > 0
    assert math.isnan(decoy_bb84(**kw).key_rate_bps)
    with pytest.raises(QkdInputError, match="0 < nu < mu"):
        decoy_bb84(**{**kw, "nu": 0.6})
    with pytest.raises(QkdInputError, match="e_mu must be a QBER"):
        decoy_bb84(**{**kw, "e_mu": 0.7})
    with pytest.raises(QkdInputError, match=r"q_mu must be in \[0, 1\]"):
        decoy_bb84(**{**kw, "q_mu": -1e-3})
    # a hopeless link gives zero, not a negative rate
    far = decoy_bb84(
        mu=0.48,
        nu=0.05,
        q_mu=g.gain(0.48, 300.0),
        e_mu=g.qber(0.48, 300.0),
        q_nu=g.gain(0.05, 300.0),
        e_nu=g.qber(0.05, 300.0),
        y0=g.y0,
    )
    assert far.key_rate_per_pulse == 0.0 and far.raw_rate_per_pulse < 0


def test_qber_interval_wilson_values():
    from coincidence import qber_interval

    # k = 0: Wilson's upper bound is z^2 / (n + z^2), with z = 1 at one sigma
    lo, hi = qber_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 / 11, rel=1e-3)
    lo, hi = qber_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(10 / 11, rel=1e-3)
    assert qber_interval(0, 0) == (0.0, 1.0)
    # large n: close to p +- sqrt(p (1 - p) / n); wider at 95 %
    lo, hi = qber_interval(300, 10_000)
    s = math.sqrt(0.03 * 0.97 / 10_000)
    assert lo == pytest.approx(0.03 - s, rel=1e-2) and hi == pytest.approx(0.03 + s, rel=1e-2)
    lo95, hi95 = qber_interval(300, 10_000, confidence=0.95)
    assert hi95 - lo95 == pytest.approx(2 * 1.96 * s, rel=1e-2)


@pytest.mark.parametrize(("p", "n"), [(0.03, 2000), (0.1, 300), (0.01, 5000)])
def test_qber_interval_is_calibrated(p, n):
    from coincidence import qber_interval

    rng = np.random.default_rng(1)
    pulls, covered = [], 0
    for k in rng.binomial(n, p, 400):
        lo, hi = qber_interval(int(k), n)
        pulls.append((k / n - p) / (0.5 * (hi - lo)))
        covered += lo <= p <= hi
    assert 0.8 <= float(np.std(pulls)) <= 1.25
    assert 0.62 <= covered / 400 <= 0.75  # 68 % coverage


@pytest.mark.parametrize(
    ("args", "msg"),
    [((5, 3), "errors <= total"), ((-1, 3), "errors <= total"), ((1.5, 3), "integers")],
)
def test_qber_interval_refuses_bad_input(args, msg):
    from coincidence import qber_interval

    with pytest.raises(QkdInputError, match=msg):
        qber_interval(*args)
    with pytest.raises(QkdInputError, match="confidence"):
        qber_interval(1, 3, confidence=1.0)


def test_qber_report_carries_intervals():
    roles = RoleMap.from_dict(
        {"alice": {"H": 0, "V": 1, "D": 2, "A": 3}, "bob": {"H": 4, "V": 5, "D": 6, "A": 7}}
    )
    m = np.zeros((8, 8), np.int64)
    m[0, 4], m[1, 5], m[0, 5] = 480, 490, 30
    m[2, 6], m[3, 7], m[2, 7] = 100, 100, 0
    rep = qber_from_matrix(m, 1.0, roles)
    assert rep.qber_z_interval[0] < rep.qber_z < rep.qber_z_interval[1]
    assert rep.qber_x_interval[0] == 0.0 and 0 < rep.qber_x_interval[1] < 0.01
