"""Privacy amplification equals the naive Toeplitz product; the key length matches hand values."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distill import (
    DistillInputError,
    FiniteKeyConfig,
    abort_probability,
    optimal_sample_size,
    qber_interval,
    secret_key_length,
    toeplitz_hash,
    toeplitz_seed,
)


def naive_toeplitz(x, s, m):
    """(I_m | T) x mod 2 with T[i, j] = s[i - j + n - m - 1], built element by element."""
    n = x.size
    r = n - m
    mat = np.zeros((m, n), np.int64)
    for i in range(m):
        mat[i, i] = 1
        for j in range(r):
            mat[i, m + j] = s[i - j + r - 1]
    return (mat @ x.astype(np.int64)) % 2


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 300), st.data())
def test_toeplitz_equals_the_naive_matrix_product(n, data):
    m = data.draw(st.integers(1, n - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 10**6)))
    x = rng.integers(0, 2, n).astype(np.uint8)
    s = rng.integers(0, 2, n - 1).astype(np.uint8)
    np.testing.assert_array_equal(toeplitz_hash(x, s, m), naive_toeplitz(x, s, m))


def test_toeplitz_on_a_large_block_spot_checked():
    n, m = 1 << 20, 600_000
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2, n).astype(np.uint8)
    s = toeplitz_seed(n, m, 42)
    y = toeplitz_hash(x, s, m)
    r = n - m
    for i in (0, 1, 12345, m - 1):
        row = s[i + r - 1 - np.arange(r)]  # s[i - j + r - 1], j = 0..r-1
        assert y[i] == (int(x[i]) + int(row @ x[m:].astype(np.int64))) % 2


def test_toeplitz_refuses_bad_sizes():
    with pytest.raises(DistillInputError, match="seed must have"):
        toeplitz_hash(np.zeros(10, np.uint8), np.zeros(5, np.uint8), 3)
    with pytest.raises(DistillInputError, match="output length"):
        toeplitz_hash(np.zeros(10, np.uint8), np.zeros(9, np.uint8), 10)


def test_key_length_matches_hand_computation():
    # n = 1e6 key bits, k = 1e5 sample bits, Q_tol = 5 %, eps_sec = 1e-10, eps_cor = 1e-15
    n, k, leak_ec, leak_ver = 1_000_000, 100_000, 300_000, 64
    mu = math.sqrt((n + k) / (n * k) * (k + 1) / k * math.log(2 / 1e-10))
    assert mu == pytest.approx(0.0161528, rel=1e-5)  # sqrt(1.1e-5 * 1.00001 * 23.719)
    e = 0.05 + mu
    h = -e * math.log2(e) - (1 - e) * math.log2(1 - e)
    cost = math.log2(2 / (1e-20 * 1e-15))
    assert cost == pytest.approx(117.2675, abs=1e-4)
    expected = math.floor(n * (1 - h) - leak_ec - leak_ver - cost)
    cfg = FiniteKeyConfig(q_tol=0.05, eps_sec=1e-10, eps_cor=1e-15)
    assert secret_key_length(n, k, leak_ec, leak_ver, cfg) == expected
    assert expected == 348_419  # by hand: 1e6 (1 - h2(0.0661528)) = 648 600.4; - 300 181.3
    # every leaked bit costs one key bit
    assert secret_key_length(n, k, leak_ec + 1, leak_ver, cfg) == expected - 1
    assert secret_key_length(1000, 10, 900, 64, cfg) == 0


def test_sample_size_and_robustness():
    cfg = FiniteKeyConfig(q_tol=0.05)
    k = optimal_sample_size(1 << 20, 0.02, cfg)
    assert 1000 < k < (1 << 19)
    assert abort_probability(k, 0.02, 0.05) <= 1e-3
    assert abort_probability(100, 0.06, 0.05) == 1.0
    est = qber_interval(30, 1000)
    assert est.low < 0.03 < est.high
    assert est.low == pytest.approx(0.02108, abs=1e-4) and est.high == pytest.approx(
        0.04253, abs=1e-4
    )
