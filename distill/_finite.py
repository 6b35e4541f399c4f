"""Finite-key accounting: sample size, robustness, QBER interval and the secret key length.

Reuses the core's statistics (``coincidence.phase_error_upper_bound``, ``h2``):
the key length of M. Tomamichel, C. C. W. Lim, N. Gisin and R. Renner, "Tight
finite-key analysis for quantum cryptography", Nat. Commun. 3, 634 (2012),
Eq. (2), with the *tolerated* QBER ``Q_tol`` fixed before the run (the protocol
aborts when the sample's QBER exceeds it, so the length never depends on the
measured value) and the measured leak of the public discussion in place of
``leak_EC``::

    l = floor( n (1 - h2(Q_tol + mu)) - leak_EC - leak_ver - log2(2 / (eps_sec^2 eps_cor)) )

``mu`` is the core's random-sampling term for ``n`` key and ``k`` sample bits.
The robustness ``eps_rob`` (Tomamichel et al., Sec. "Robustness") is the
probability that an honest link whose QBER is ``Q`` aborts: by Hoeffding's
inequality at most ``exp(-2 k (Q_tol - Q)^2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from coincidence import QkdInputError, h2, phase_error_upper_bound

from ._errors import DistillInputError


@dataclass(frozen=True)
class FiniteKeyConfig:
    """Security parameters fixed before the run.

    Attributes:
        q_tol: tolerated QBER: a frame whose sample exceeds it is aborted; the key
            length uses it (not the measured QBER).
        eps_sec: secrecy parameter of the finite-key bound.
        eps_cor: correctness parameter; must be at least the verification hash's
            collision probability (checked per frame).
    """

    q_tol: float = 0.05
    eps_sec: float = 1e-10
    eps_cor: float = 1e-15

    def __post_init__(self) -> None:
        if not 0.0 < self.q_tol < 0.5:
            raise DistillInputError(f"q_tol must be in (0, 0.5), got {self.q_tol}")
        for name in ("eps_sec", "eps_cor"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise DistillInputError(f"{name} must be in (0, 1), got {v}")

    @property
    def finite_size_cost_bits(self) -> float:
        """``log2(2 / (eps_sec^2 eps_cor))``."""
        return math.log2(2.0 / (self.eps_sec**2 * self.eps_cor))


def secret_key_length(
    n_key: int, n_test: int, leak_ec: int, leak_ver: int, config: FiniteKeyConfig
) -> int:
    """Bits of secret key from ``n_key`` reconciled bits (formula in the module docstring).

    ``n_test`` sample bits were disclosed for estimation; ``leak_ec`` and
    ``leak_ver`` are the bits disclosed by error correction and verification.
    Clipped at 0.
    """
    if n_key <= 0 or n_test <= 0:
        raise DistillInputError(f"n_key and n_test must be positive, got {n_key} and {n_test}")
    if leak_ec < 0 or leak_ver < 0:
        raise DistillInputError(f"leaks must be >= 0, got {leak_ec} and {leak_ver}")
    try:
        e_ph = phase_error_upper_bound(config.q_tol, n_key, n_test, config.eps_sec)
    except QkdInputError as e:
        raise DistillInputError(str(e)) from None
    ell = n_key * (1.0 - h2(e_ph)) - leak_ec - leak_ver - config.finite_size_cost_bits
    return max(0, math.floor(ell))


def abort_probability(n_test: int, q_expected: float, q_tol: float) -> float:
    """Robustness: upper bound on P(sample QBER > q_tol) for a true QBER ``q_expected``.

    Hoeffding: ``exp(-2 k (q_tol - q)^2)`` for ``q < q_tol``; 1 otherwise.
    """
    if n_test <= 0:
        raise DistillInputError(f"n_test must be positive, got {n_test}")
    if q_expected >= q_tol:
        return 1.0
    return math.exp(-2.0 * n_test * (q_tol - q_expected) ** 2)


def optimal_sample_size(
    n_total: int,
    q_expected: float,
    config: FiniteKeyConfig,
    *,
    f_ec: float = 1.06,
    max_abort: float = 1e-3,
) -> int:
    """Sample size ``k`` that maximises the key length of ``n_total`` sifted bits.

    The expected length ``(n - k)(1 - h2(Q_tol + mu(n - k, k))) - f_ec (n - k) h2(q)
    - log2(2/(eps_sec^2 eps_cor))`` is maximised over a geometric grid of ``k``,
    among the sizes whose abort probability (robustness) is at most
    ``max_abort``. Refuses a frame for which no size gives a positive length.
    """
    if n_total < 16:
        raise DistillInputError(f"need at least 16 sifted bits, got {n_total}")
    if not 0.0 <= q_expected < config.q_tol:
        raise DistillInputError(
            f"expected QBER {q_expected} must be below the tolerated {config.q_tol}"
        )
    best_k, best_len = 0, 0.0
    k = 8.0
    while k < n_total / 2:
        kk = int(k)
        n = n_total - kk
        if abort_probability(kk, q_expected, config.q_tol) <= max_abort:
            e_ph = phase_error_upper_bound(config.q_tol, n, kk, config.eps_sec)
            length = n * (1 - h2(e_ph)) - f_ec * n * h2(q_expected) - config.finite_size_cost_bits
            if length > best_len:
                best_k, best_len = kk, length
        k *= 1.05
    if best_k == 0:
        raise DistillInputError(
            f"no sample size gives a positive key from {n_total} sifted bits at QBER "
            f"{q_expected} with Q_tol {config.q_tol}: use larger frames"
        )
    return best_k


@dataclass(frozen=True)
class QberEstimate:
    """QBER of the disclosed sample with its two-sided confidence interval.

    Attributes:
        n_sample: sample bits compared.
        errors: positions where the two sides differ.
        qber: errors / n_sample.
        low, high: Wilson score interval (E. B. Wilson, JASA 22, 209 (1927)) at
            ``confidence``.
        confidence: two-sided confidence level of the interval.
    """

    n_sample: int
    errors: int
    qber: float
    low: float
    high: float
    confidence: float


def qber_interval(errors: int, n_sample: int, confidence: float = 0.95) -> QberEstimate:
    """The sample's QBER with a Wilson score interval at ``confidence``."""
    if n_sample <= 0 or not 0 <= errors <= n_sample:
        raise DistillInputError(
            f"need 0 <= errors <= n_sample, n_sample > 0; got {errors}/{n_sample}"
        )
    if not 0.0 < confidence < 1.0:
        raise DistillInputError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = errors / n_sample
    den = 1.0 + z * z / n_sample
    centre = (p + z * z / (2 * n_sample)) / den
    half = z * math.sqrt(p * (1 - p) / n_sample + z * z / (4 * n_sample * n_sample)) / den
    return QberEstimate(
        n_sample, errors, p, max(0.0, centre - half), min(1.0, centre + half), confidence
    )
