"""QBER and secret-key rates: coincidence matrix -> per-basis QBER -> BBM92 / decoy BB84 rates.

Conventions
-----------
* Z basis = H/V, X basis = D/A. A ``RoleMap`` says which tagger channel is
  Alice's and Bob's H, V, D, A detector, and which Bell state the source makes;
  the Bell state sets the expected correlation per basis:

  ========  ==============  ==============
  state     Z (H/V)         X (D/A)
  ========  ==============  ==============
  phi+      correlated      correlated
  phi-      correlated      anti
  psi+      anti            correlated
  psi-      anti            anti
  ========  ==============  ==============

  "correlated" means H-H, V-V (D-D, A-A) are the right outcome pairs;
  "anti" means H-V, V-H (D-A, A-D) are. ``RoleMap.correlation`` overrides a basis.
* Sifted = coincidences where both sides measured in the same basis; errors =
  the wrong outcome pairs among them; QBER = errors / sifted.
* E_bit is the QBER of the key basis, E_phase the QBER of the other basis.
* Every key rate is clipped at 0: a negative value of the formula means no
  secret key can be distilled, not a negative rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from ._errors import CoincidenceError

_BASIS_LABELS = {"Z": ("H", "V"), "X": ("D", "A")}
_LABELS = ("H", "V", "D", "A")
BELL_STATES: dict[str, dict[str, bool]] = {
    # basis -> True if correlated, False if anti-correlated
    "phi+": {"Z": True, "X": True},
    "phi-": {"Z": True, "X": False},
    "psi+": {"Z": False, "X": True},
    "psi-": {"Z": False, "X": False},
}
_CORR_WORDS = {
    "correlated": True,
    "corr": True,
    "anti": False,
    "anticorrelated": False,
    "anti-correlated": False,
}


class QkdInputError(CoincidenceError):
    """An input to a QBER or key-rate formula is out of its meaningful range."""


# ---------------------------------------------------------------- roles and QBER


def _parse_correlation(value: object, where: str) -> bool:
    """'correlated' / 'anti' (or a bool) -> True if correlated."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _CORR_WORDS:
        return _CORR_WORDS[value.strip().lower()]
    raise QkdInputError(f"{where}: expected 'correlated' or 'anti', got {value!r}")


@dataclass(frozen=True)
class RoleMap:
    """Which channel is which detector on each side, and the expected correlations.

    Attributes:
        alice: label -> channel, labels among H, V, D, A (e.g. ``{"H": 0, "V": 1, ...}``).
        bob: the same for Bob.
        bell_state: ``phi+``, ``phi-``, ``psi+`` or ``psi-``; sets the expected
            correlation per basis (see the module docstring).
        correlation: optional per-basis override, e.g. ``{"X": "anti"}``.

    A basis is used when both of its labels are mapped on both sides; a basis
    mapped on one side only, half a basis, or a channel used twice is refused.
    """

    alice: dict[str, int]
    bob: dict[str, int]
    bell_state: str = "phi+"
    correlation: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.bell_state not in BELL_STATES:
            raise QkdInputError(
                f"bell_state must be one of {sorted(BELL_STATES)}, got {self.bell_state!r}"
            )
        seen: dict[int, str] = {}
        for side, roles in (("alice", self.alice), ("bob", self.bob)):
            if not isinstance(roles, Mapping):
                raise QkdInputError(f"{side} must map labels to channels, got {roles!r}")
            for label, ch in roles.items():
                if label not in _LABELS:
                    raise QkdInputError(
                        f"{side}: unknown label {label!r} (use H, V for Z and D, A for X)"
                    )
                if isinstance(ch, bool) or not isinstance(ch, int | np.integer) or ch < 0:
                    raise QkdInputError(
                        f"{side}[{label!r}] must be a non-negative channel number, got {ch!r}"
                    )
                if int(ch) in seen:
                    raise QkdInputError(
                        f"channel {int(ch)} is used twice: {seen[int(ch)]} and {side}[{label!r}]"
                    )
                seen[int(ch)] = f"{side}[{label!r}]"
            for basis, (l0, l1) in _BASIS_LABELS.items():
                if (l0 in roles) != (l1 in roles):
                    raise QkdInputError(
                        f"{side}: basis {basis} needs both {l0} and {l1}, got only "
                        f"{l0 if l0 in roles else l1}"
                    )
        for basis, (l0, _) in _BASIS_LABELS.items():
            if (l0 in self.alice) != (l0 in self.bob):
                raise QkdInputError(
                    f"basis {basis} is mapped for {'alice' if l0 in self.alice else 'bob'} only"
                )
        if not self.bases:
            raise QkdInputError("the role map has no complete basis (need H,V and/or D,A)")
        for basis, value in self.correlation.items():
            if basis not in _BASIS_LABELS:
                raise QkdInputError(f"correlation override for unknown basis {basis!r}")
            _parse_correlation(value, f"correlation[{basis!r}]")

    @property
    def bases(self) -> tuple[str, ...]:
        """The bases mapped on both sides, from ``("Z", "X")``."""
        return tuple(b for b, (l0, _) in _BASIS_LABELS.items() if l0 in self.alice)

    def correlated(self, basis: str) -> bool:
        """True if the right outcomes in ``basis`` are equal (H-H), False if opposite (H-V)."""
        if basis in self.correlation:
            return _parse_correlation(self.correlation[basis], f"correlation[{basis!r}]")
        return BELL_STATES[self.bell_state][basis]

    @property
    def max_channel(self) -> int:
        """Largest channel number used."""
        return max(max(self.alice.values()), max(self.bob.values()))

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> RoleMap:
        """Build from a config mapping with keys alice, bob, [bell_state], [correlation]."""
        if not isinstance(d, Mapping):
            raise QkdInputError(f"role map must be a mapping, got {type(d).__name__}")
        unknown = set(d) - {"alice", "bob", "bell_state", "correlation"}
        if unknown:
            raise QkdInputError(
                f"unknown role-map keys {sorted(unknown)} (allowed: alice, bob, bell_state, "
                "correlation)"
            )
        for key in ("alice", "bob"):
            if key not in d:
                raise QkdInputError(f"role map lacks {key!r}")
        return cls(
            alice=dict(d["alice"]),  # type: ignore[call-overload]
            bob=dict(d["bob"]),  # type: ignore[call-overload]
            bell_state=str(d.get("bell_state", "phi+")),
            correlation=dict(d.get("correlation") or {}),  # type: ignore[call-overload]
        )


@dataclass(frozen=True)
class BasisQber:
    """Sifted counts and QBER of one basis.

    Attributes:
        basis: ``"Z"`` or ``"X"``.
        sifted: coincidences with both sides in this basis.
        errors: the wrong outcome pairs among them.
        qber: errors / sifted (nan if sifted == 0).
        sifted_rate_hz: sifted / duration.
        qber_interval: (low, high) 68.27 % (1-sigma) Wilson score interval of the
            QBER (see ``qber_interval``); (0, 1) when nothing was sifted.
    """

    basis: str
    sifted: int
    errors: int
    qber: float
    sifted_rate_hz: float
    qber_interval: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class QberReport:
    """Per-basis QBER of a measurement of ``duration_s`` seconds (a missing basis has 0 sifted)."""

    z: BasisQber
    x: BasisQber
    duration_s: float

    @property
    def qber_z(self) -> float:
        """QBER of the Z (H/V) basis."""
        return self.z.qber

    @property
    def qber_x(self) -> float:
        """QBER of the X (D/A) basis."""
        return self.x.qber

    @property
    def qber_z_interval(self) -> tuple[float, float]:
        """1-sigma (68.27 %) Wilson interval of the Z-basis QBER."""
        return self.z.qber_interval

    @property
    def qber_x_interval(self) -> tuple[float, float]:
        """1-sigma (68.27 %) Wilson interval of the X-basis QBER."""
        return self.x.qber_interval

    @property
    def sifted(self) -> int:
        """Sifted coincidences of both bases."""
        return self.z.sifted + self.x.sifted

    @property
    def sifted_rate_hz(self) -> float:
        """Sifted rate of both bases, Hz."""
        return self.z.sifted_rate_hz + self.x.sifted_rate_hz

    def basis(self, name: str) -> BasisQber:
        """The ``BasisQber`` of ``"Z"`` or ``"X"``."""
        if name not in ("Z", "X"):
            raise QkdInputError(f"basis must be 'Z' or 'X', got {name!r}")
        return self.z if name == "Z" else self.x


def qber_from_matrix(coincidences: np.ndarray, duration_s: float, roles: RoleMap) -> QberReport:
    """Per-basis sifted counts and QBER from a coincidence matrix.

    ``coincidences[i, j]`` counts coincidences between channels i and j. The
    matrix may be symmetric (as ``CoincidenceReport.coincidences``) or triangular
    (each pair counted in one of the two cells); a pair counted in both cells
    with different values is refused as ambiguous.
    """
    m = np.asarray(coincidences)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise QkdInputError(f"coincidences must be a square matrix, got shape {m.shape}")
    if m.dtype.kind not in "iuf":
        raise QkdInputError(f"coincidences must be numeric, got dtype {m.dtype}")
    if m.size and (not np.all(np.isfinite(m)) or m.min() < 0):
        raise QkdInputError("coincidences must be finite and non-negative")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise QkdInputError(f"duration_s must be positive, got {duration_s}")
    if not isinstance(roles, RoleMap):
        raise QkdInputError(f"roles must be a RoleMap, got {type(roles).__name__}")
    n = m.shape[0]
    for side, rmap in (("alice", roles.alice), ("bob", roles.bob)):
        for label, ch in rmap.items():
            if ch >= n:
                raise QkdInputError(
                    f"{side}[{label!r}] is channel {ch}, outside the {n}x{n} coincidence matrix"
                )

    def pair(i: int, j: int) -> int:
        a, b = m[i, j], m[j, i]
        if a == b or b == 0:
            return int(a)
        if a == 0:
            return int(b)
        raise QkdInputError(
            f"coincidences[{i}, {j}] = {a} but coincidences[{j}, {i}] = {b}: the matrix must "
            "be symmetric or triangular"
        )

    out: dict[str, BasisQber] = {}
    for basis, (l0, l1) in _BASIS_LABELS.items():
        if basis not in roles.bases:
            out[basis] = BasisQber(basis, 0, 0, math.nan, 0.0)
            continue
        a0, a1 = roles.alice[l0], roles.alice[l1]
        b0, b1 = roles.bob[l0], roles.bob[l1]
        same = pair(a0, b0) + pair(a1, b1)
        opposite = pair(a0, b1) + pair(a1, b0)
        sifted = same + opposite
        errors = opposite if roles.correlated(basis) else same
        qber = errors / sifted if sifted else math.nan
        out[basis] = BasisQber(
            basis, sifted, errors, qber, sifted / duration_s, qber_interval(errors, sifted)
        )
    return QberReport(z=out["Z"], x=out["X"], duration_s=float(duration_s))


def qber_interval(errors: int, total: int, confidence: float = 0.6827) -> tuple[float, float]:
    """Two-sided ``confidence`` interval (low, high) of an error rate ``errors / total``.

    The Wilson score interval (E. B. Wilson, J. Am. Stat. Assoc. 22, 209 (1927);
    recommended over the Wald and the conservative Clopper-Pearson intervals by
    Brown, Cai & DasGupta, Stat. Sci. 16, 101 (2001)): the set of rates p whose
    normal score test ``|errors - total p| <= z sqrt(total p (1 - p))`` passes,
    ``z`` the two-sided normal quantile of ``confidence`` (1.0 at the default,
    one sigma). It stays inside [0, 1], is not empty at 0 or ``total`` errors,
    and is (0, 1) when ``total`` is 0.
    """
    if isinstance(errors, bool) or isinstance(total, bool):
        raise QkdInputError(f"errors and total must be integers, got {errors!r} and {total!r}")
    try:
        k, n = int(errors), int(total)
    except (TypeError, ValueError):
        raise QkdInputError(
            f"errors and total must be integers, got {errors!r} and {total!r}"
        ) from None
    if k != errors or n != total or n < 0 or not 0 <= k <= n:
        raise QkdInputError(f"need integers 0 <= errors <= total, got {errors!r} and {total!r}")
    if not (isinstance(confidence, int | float) and 0.0 < confidence < 1.0):
        raise QkdInputError(f"confidence must be in (0, 1), got {confidence!r}")
    if n == 0:
        return (0.0, 1.0)
    z = NormalDist().inv_cdf(0.5 + 0.5 * float(confidence))
    p = k / n
    z2n = z * z / n
    centre = (p + 0.5 * z2n) / (1.0 + z2n)
    half = z * math.sqrt(p * (1.0 - p) / n + 0.25 * z2n / n) / (1.0 + z2n)
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return (low, high)


# ---------------------------------------------------------------- entropy and checks


def h2(p: float) -> float:
    """Binary entropy in bits, ``-p log2 p - (1-p) log2 (1-p)``; 0 at p = 0 and p = 1."""
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise QkdInputError(f"h2 needs a probability in [0, 1], got {p}")
    if p == 0.0 or p == 1.0:
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def _check_qber(name: str, e: float) -> float:
    e = float(e)
    if not 0.0 <= e <= 0.5:
        raise QkdInputError(f"{name} must be a QBER in [0, 0.5], got {e}")
    return e


def _check_rate(name: str, r: float) -> float:
    r = float(r)
    if not (math.isfinite(r) and r >= 0):
        raise QkdInputError(f"{name} must be a finite rate >= 0, got {r}")
    return r


def _check_f_ec(f_ec: float) -> float:
    f_ec = float(f_ec)
    if not (math.isfinite(f_ec) and f_ec >= 1.0):
        raise QkdInputError(f"f_ec must be >= 1 (1 is the Shannon limit), got {f_ec}")
    return f_ec


# ---------------------------------------------------------------- BBM92


def bbm92_asymptotic(
    sifted_rate_hz: float, e_bit: float, e_phase: float, f_ec: float = 1.16
) -> float:
    """Asymptotic BBM92 secret-key rate, bits/s: ``R_sift (1 - f_EC h2(E_bit) - h2(E_phase))``.

    Shor-Preskill form for entanglement-based BB84 (BBM92); ``f_ec`` is the
    error-correction inefficiency (1 = Shannon limit). Clipped at 0.
    """
    r = _check_rate("sifted_rate_hz", sifted_rate_hz)
    eb = _check_qber("e_bit", e_bit)
    ep = _check_qber("e_phase", e_phase)
    f = _check_f_ec(f_ec)
    return max(0.0, r * (1.0 - f * h2(eb) - h2(ep)))


def bbm92_key_rate(report: QberReport, *, f_ec: float = 1.16, key_basis: str = "Z") -> float:
    """Asymptotic BBM92 key rate (bits/s) of a ``QberReport``.

    ``key_basis`` ``"Z"`` or ``"X"`` distils that basis (the other gives the
    phase error); ``"both"`` distils each basis with the other as its phase
    error and adds the two (the usual symmetric BBM92).
    """
    if key_basis not in ("Z", "X", "both"):
        raise QkdInputError(f"key_basis must be 'Z', 'X' or 'both', got {key_basis!r}")
    keys = ("Z", "X") if key_basis == "both" else (key_basis,)
    total = 0.0
    for k in keys:
        kb, ph = report.basis(k), report.basis("X" if k == "Z" else "Z")
        if kb.sifted == 0:
            continue
        if ph.sifted == 0:
            raise QkdInputError(
                f"no sifted counts in the {ph.basis} basis: the phase error of key basis "
                f"{k} cannot be estimated"
            )
        for b in (kb, ph):
            if b.qber > 0.5:
                raise QkdInputError(
                    f"QBER {b.qber:.3f} > 0.5 in the {b.basis} basis: the role map's "
                    "bell_state (or correlation override) probably expects the opposite "
                    "correlation there"
                )
        total += bbm92_asymptotic(kb.sifted_rate_hz, kb.qber, ph.qber, f_ec)
    return total


def phase_error_upper_bound(
    e_test: float, n_key: int, n_test: int, eps_sec: float = 1e-10
) -> float:
    """Upper bound on the key bits' phase error from the test basis, failure probability ~eps.

    ``E_phase <= e_test + mu`` with
    ``mu = sqrt((n + k) / (n k) * (k + 1) / k * ln(2 / eps_sec))`` for ``n = n_key``
    key bits and ``k = n_test`` test bits: the random-sampling (Serfling)
    bound as used by M. Tomamichel, C. C. W. Lim, N. Gisin and R. Renner,
    "Tight finite-key analysis for quantum cryptography", Nat. Commun. 3, 634
    (2012), in their key-length formula (Eq. 2 there, as we read it; the
    statistical term mu). It follows from Serfling's inequality
    (R. J. Serfling, Ann. Stat. 2, 39 (1974)) with tail probability
    ``(eps_sec / 2)**2``. Result capped at 0.5.
    """
    e = _check_qber("e_test", e_test)
    n, k = int(n_key), int(n_test)
    if n <= 0 or k <= 0:
        raise QkdInputError(f"n_key and n_test must be positive, got {n} and {k}")
    if not 0.0 < eps_sec < 1.0:
        raise QkdInputError(f"eps_sec must be in (0, 1), got {eps_sec}")
    mu = math.sqrt((n + k) / (n * k) * (k + 1) / k * math.log(2.0 / eps_sec))
    return min(0.5, e + mu)


def bbm92_finite_key_length(
    n_key: int,
    e_bit: float,
    n_test: int,
    e_test: float,
    *,
    f_ec: float = 1.16,
    eps_sec: float = 1e-10,
    eps_cor: float = 1e-15,
) -> float:
    """Secret bits from a finite block (Tomamichel et al. 2012 key length, clipped at 0).

    ``l = n (1 - h2(E_phase^U)) - f_EC n h2(E_bit) - log2(2 / (eps_sec^2 eps_cor))``
    with ``E_phase^U = phase_error_upper_bound(e_test, n, k, eps_sec)``; ``n``
    sifted key bits with QBER ``e_bit``, ``k`` test bits with QBER ``e_test``.
    The key is ``eps_sec``-secret and ``eps_cor``-correct (composable).
    """
    eb = _check_qber("e_bit", e_bit)
    f = _check_f_ec(f_ec)
    if not 0.0 < eps_cor < 1.0:
        raise QkdInputError(f"eps_cor must be in (0, 1), got {eps_cor}")
    e_ph = phase_error_upper_bound(e_test, n_key, n_test, eps_sec)
    n = int(n_key)
    ell = n * (1.0 - h2(e_ph)) - f * n * h2(eb) - math.log2(2.0 / (eps_sec**2 * eps_cor))
    return max(0.0, ell)


def bbm92_finite(
    n_key: int,
    e_bit: float,
    n_test: int,
    e_test: float,
    duration_s: float,
    *,
    f_ec: float = 1.16,
    eps_sec: float = 1e-10,
    eps_cor: float = 1e-15,
) -> float:
    """Finite-size BBM92 key rate, bits/s: ``bbm92_finite_key_length(...) / duration_s``."""
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise QkdInputError(f"duration_s must be positive, got {duration_s}")
    ell = bbm92_finite_key_length(
        n_key, e_bit, n_test, e_test, f_ec=f_ec, eps_sec=eps_sec, eps_cor=eps_cor
    )
    return ell / duration_s


# ---------------------------------------------------------------- decoy-state BB84


@dataclass(frozen=True)
class DecoyResult:
    """Vacuum + weak decoy BB84 (Ma, Qi, Zhao, Lo 2005) bounds and GLLP key rate.

    Attributes:
        key_rate_per_pulse: secure bits per signal pulse sent, clipped at 0.
        key_rate_bps: ``key_rate_per_pulse * rep_rate_hz`` (nan without a rep rate).
        y1_lower: lower bound on the single-photon yield Y1.
        e1_upper: upper bound on the single-photon error rate e1 (capped at 0.5).
        q1_lower: lower bound on the single-photon gain ``Y1 mu exp(-mu)``.
        gain_signal: the signal gain Q_mu used.
        qber_signal: the signal QBER E_mu used.
        raw_rate_per_pulse: the formula's value before clipping (negative: no key).
    """

    key_rate_per_pulse: float
    key_rate_bps: float
    y1_lower: float
    e1_upper: float
    q1_lower: float
    gain_signal: float
    qber_signal: float
    raw_rate_per_pulse: float


def _check_prob(name: str, x: float) -> float:
    x = float(x)
    if not 0.0 <= x <= 1.0:
        raise QkdInputError(f"{name} must be in [0, 1], got {x}")
    return x


def decoy_bb84(
    *,
    mu: float,
    nu: float,
    q_mu: float,
    e_mu: float,
    q_nu: float,
    e_nu: float,
    y0: float,
    f_ec: float = 1.22,
    q: float = 0.5,
    e0: float = 0.5,
    rep_rate_hz: float | None = None,
) -> DecoyResult:
    """Vacuum + weak decoy BB84 key rate from measured gains and QBERs.

    Bounds of X. Ma, B. Qi, Y. Zhao and H.-K. Lo, "Practical decoy state for
    quantum key distribution", Phys. Rev. A 72, 012326 (2005), Sec. "vacuum +
    weak decoy state" (their Eqs. 34 and 37)::

        Y1^L = mu / (mu nu - nu^2) * (Q_nu e^nu - Q_mu e^mu nu^2/mu^2
                                      - (mu^2 - nu^2)/mu^2 * Y0)
        e1^U = (E_nu Q_nu e^nu - e0 Y0) / (Y1^L nu)

    and the GLLP rate (their Eq. 1) ``R >= q {-Q_mu f(E_mu) H2(E_mu) + Q1 [1 - H2(e1)]}``
    with ``Q1 = Y1 mu e^-mu``. ``mu`` signal and ``nu`` weak-decoy mean photon
    numbers (``0 < nu < mu``); ``y0`` the vacuum-decoy gain (background yield);
    ``q`` the sifting factor (1/2 for BB84); ``e0 = 1/2`` the background error
    rate. Rate clipped at 0; zero when Y1^L is not positive.
    """
    mu, nu = float(mu), float(nu)
    if not 0.0 < nu < mu:
        raise QkdInputError(f"need 0 < nu < mu for the weak decoy, got mu={mu}, nu={nu}")
    q_mu, q_nu, y0 = _check_prob("q_mu", q_mu), _check_prob("q_nu", q_nu), _check_prob("y0", y0)
    e_mu, e_nu = _check_qber("e_mu", e_mu), _check_qber("e_nu", e_nu)
    f = _check_f_ec(f_ec)
    q = _check_prob("q", q)
    e0 = _check_qber("e0", e0)
    y1 = (mu / (mu * nu - nu * nu)) * (
        q_nu * math.exp(nu)
        - q_mu * math.exp(mu) * nu * nu / (mu * mu)
        - (mu * mu - nu * nu) / (mu * mu) * y0
    )
    if y1 > 0:
        e1 = (e_nu * q_nu * math.exp(nu) - e0 * y0) / (y1 * nu)
        e1 = min(0.5, max(0.0, e1))
        q1 = y1 * mu * math.exp(-mu)
        raw = q * (-q_mu * f * h2(e_mu) + q1 * (1.0 - h2(e1)))
    else:
        e1, q1 = 0.5, 0.0
        raw = q * (-q_mu * f * h2(e_mu))
    rate = max(0.0, raw)
    bps = math.nan if rep_rate_hz is None else rate * _check_rate("rep_rate_hz", rep_rate_hz)
    return DecoyResult(rate, bps, y1, e1, q1, q_mu, e_mu, raw)


@dataclass(frozen=True)
class FiberLink:
    """Channel model of a weak-coherent-pulse BB84 link (Ma, Qi, Zhao, Lo 2005, Sec. II).

    ``eta = eta_bob * 10^(-alpha L / 10)``; an i-photon pulse is detected with
    ``eta_i = 1 - (1 - eta)^i``; yields ``Y_i = Y0 + eta_i``; gain
    ``Q_mu = Y0 + 1 - exp(-eta mu)``; QBER
    ``E_mu = (e0 Y0 + e_detector (1 - exp(-eta mu))) / Q_mu``.

    Attributes:
        alpha_db_per_km: fibre loss.
        e_detector: probability that a photon hits the wrong detector.
        y0: background (dark count) yield per pulse.
        eta_bob: Bob's transmittance times detector efficiency.
        e0: error rate of background counts.
    """

    alpha_db_per_km: float = 0.21
    e_detector: float = 0.033
    y0: float = 1.7e-6
    eta_bob: float = 0.045
    e0: float = 0.5

    @classmethod
    def gys(cls) -> FiberLink:
        """The GYS parameters (Gobby, Yuan, Shields, APL 84, 3762 (2004)) used by Ma et al."""
        return cls(alpha_db_per_km=0.21, e_detector=0.033, y0=1.7e-6, eta_bob=0.045)

    def transmittance(self, distance_km: float) -> float:
        """Overall transmittance eta at ``distance_km``."""
        if distance_km < 0:
            raise QkdInputError(f"distance_km must be >= 0, got {distance_km}")
        return self.eta_bob * 10.0 ** (-self.alpha_db_per_km * distance_km / 10.0)

    def gain(self, mu: float, distance_km: float) -> float:
        """Gain Q_mu: probability of a detection per pulse of mean photon number ``mu``."""
        eta = self.transmittance(distance_km)
        return self.y0 + 1.0 - math.exp(-eta * mu)

    def qber(self, mu: float, distance_km: float) -> float:
        """QBER E_mu of pulses of mean photon number ``mu``."""
        eta = self.transmittance(distance_km)
        det = 1.0 - math.exp(-eta * mu)
        return (self.e0 * self.y0 + self.e_detector * det) / (self.y0 + det)

    def single_photon(self, distance_km: float) -> tuple[float, float]:
        """Exact single-photon yield Y1 and error rate e1 of the model (infinite decoys)."""
        eta = self.transmittance(distance_km)
        y1 = self.y0 + eta
        return y1, (self.e0 * self.y0 + self.e_detector * eta) / y1

    def decoy(
        self, distance_km: float, *, mu: float, nu: float, f_ec: float = 1.22, q: float = 0.5
    ) -> DecoyResult:
        """Vacuum + weak decoy key rate the model predicts at ``distance_km``."""
        return decoy_bb84(
            mu=mu,
            nu=nu,
            q_mu=self.gain(mu, distance_km),
            e_mu=self.qber(mu, distance_km),
            q_nu=self.gain(nu, distance_km),
            e_nu=self.qber(nu, distance_km),
            y0=self.y0,
            f_ec=f_ec,
            q=q,
            e0=self.e0,
        )

    def asymptotic_rate(
        self, distance_km: float, *, mu: float, f_ec: float = 1.22, q: float = 0.5
    ) -> float:
        """GLLP rate per pulse with the exact Y1, e1 (the infinite-decoy limit), clipped at 0."""
        q_mu, e_mu = self.gain(mu, distance_km), self.qber(mu, distance_km)
        y1, e1 = self.single_photon(distance_km)
        q1 = y1 * mu * math.exp(-mu)
        raw = q * (-q_mu * f_ec * h2(e_mu) + q1 * (1.0 - h2(min(0.5, e1))))
        return max(0.0, raw)


def _best_over_mu(rate_at: object, mus: np.ndarray) -> float:
    """Largest value of ``rate_at(mu)`` over the grid ``mus``."""
    return max(rate_at(float(m)) for m in mus)  # type: ignore[operator]


def max_distance_km(
    link: FiberLink,
    *,
    nu: float | None = None,
    f_ec: float = 1.22,
    q: float = 0.5,
    mu_grid: np.ndarray | None = None,
    tol_km: float = 0.05,
) -> float:
    """Largest distance with a positive key rate, the signal ``mu`` optimised at each distance.

    ``nu=None`` uses the infinite-decoy (exact Y1, e1) rate; a number uses the
    vacuum + weak decoy bounds with that weak-decoy intensity (the grid is then
    restricted to ``mu > nu``). Bisection to ``tol_km``.
    """
    mus = np.linspace(0.02, 1.0, 99) if mu_grid is None else np.asarray(mu_grid, float)
    if nu is not None:
        mus = mus[mus > nu * (1.0 + 1e-3) + 1e-9]  # mu -> nu makes the bound ill-conditioned
        if mus.size == 0:
            raise QkdInputError(f"no signal mu in the grid above nu={nu}")

    def best(distance: float) -> float:
        if nu is None:
            return _best_over_mu(
                lambda m: link.asymptotic_rate(distance, mu=m, f_ec=f_ec, q=q), mus
            )
        return _best_over_mu(
            lambda m: link.decoy(distance, mu=m, nu=nu, f_ec=f_ec, q=q).key_rate_per_pulse, mus
        )

    lo, hi = 0.0, 1.0
    if best(lo) <= 0:
        return 0.0
    while best(hi) > 0:
        lo, hi = hi, hi * 2
        if hi > 1e5:
            raise QkdInputError("key rate stays positive beyond 100000 km: check the link model")
    while hi - lo > tol_km:
        mid = 0.5 * (lo + hi)
        if best(mid) > 0:
            lo = mid
        else:
            hi = mid
    return lo
