"""Cascade: identical keys at every QBER, the protocol's invariants, and efficiency."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coincidence import h2
from distill import (
    CascadeAlice,
    CascadeBob,
    CascadeParams,
    DistillInputError,
    EcDone,
    ParityQuery,
    ProtocolError,
    choose_params,
    decode,
    encode,
    reconcile,
)
from distill.testing import correlated_keys


@pytest.mark.parametrize("qber", [0.01, 0.02, 0.03, 0.05, 0.08])
def test_identical_keys_at_each_qber_over_many_seeds(qber):
    rng = np.random.default_rng(int(qber * 1000))
    n = 1 << 14
    fails, fs = 0, []
    for seed in range(20):
        a, b = correlated_keys(n, qber, rng)
        corrected, alice, bob = reconcile(a, b, qber, seed=seed + 1)
        fails += not np.array_equal(corrected, a)
        assert alice.leak_bits == bob.leak_bits
        fs.append(alice.leak_bits / (n * h2(float(np.mean(a != b)))))
    assert fails == 0
    assert np.mean(fs) < 1.12  # loose: the benchmark measures it precisely


def test_the_interpreted_twin_runs_the_same_protocol():
    rng = np.random.default_rng(5)
    a, b = correlated_keys(4096, 0.03, rng)
    c1, a1, b1 = reconcile(a, b, 0.03, seed=9)
    c2, a2, b2 = reconcile(a, b, 0.03, seed=9, backend_name="python")
    np.testing.assert_array_equal(c1, c2)
    assert (a1.leak_bits, b1.rounds) == (a2.leak_bits, b2.rounds)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(16, 3000),
    qber=st.sampled_from([0.01, 0.03, 0.08, 0.15]),
    k1=st.sampled_from([2, 4, 8, 32]),
    passes=st.integers(2, 10),
    seed=st.integers(0, 2**64 - 1),
    data=st.data(),
)
def test_state_machines_end_consistent(n, qber, k1, passes, seed, data):
    """Any frame, any parameters: both sides count the same leak, and at EcDone every
    block of every pass has the same parity at both sides (Cascade's stopping rule)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 10_000)))
    a, b = correlated_keys(n, qber, rng)
    params = CascadeParams(k1, min(k1 * 4, 1 << 20), passes)
    alice = CascadeAlice(a, frame_id=3)
    bob = CascadeBob(b, frame_id=3, seed=seed, params=params)
    msg = bob.start()
    while not isinstance(msg, EcDone):
        msg = bob.handle(decode(encode(alice.handle(decode(encode(msg))))))
    assert alice.handle(msg) is None and alice.done
    assert alice.leak_bits == bob.leak_bits
    c = bob.corrected
    for lay, k, order in ((0, k1, np.arange(n)), (1, params.k2, bob._side.order1)):
        pa = np.add.reduceat(a[order], np.arange(0, n, k)) % 2
        pc = np.add.reduceat(c[order], np.arange(0, n, k)) % 2
        np.testing.assert_array_equal(pa, pc, err_msg=f"pass {lay + 1}")
    # differences left (rare at small n) are an even number in every block
    assert int((a != c).sum()) % 2 == 0


def test_alice_refuses_queries_outside_the_frame():
    rng = np.random.default_rng(1)
    a, b = correlated_keys(1024, 0.05, rng)
    alice = CascadeAlice(a, frame_id=1)
    bob = CascadeBob(b, frame_id=1, seed=1, qber=0.05)
    bob.handle(alice.handle(bob.start()))
    bad = ParityQuery(
        1,
        1,
        np.array([0], np.uint8),
        np.array([0], np.uint8),
        np.array([10], np.int64),
        np.array([5000], np.int64),
    )
    with pytest.raises(ProtocolError, match=r"node 0 .*outside the frame"):
        alice.handle(bad)
    wrong_seq = ParityQuery(
        1,
        7,
        np.array([0], np.uint8),
        np.array([0], np.uint8),
        np.array([0], np.int64),
        np.array([4], np.int64),
    )
    with pytest.raises(ProtocolError, match="seq 7, expected 1"):
        alice.handle(wrong_seq)
    costly = ParityQuery(
        1,
        1,
        np.full(64, 3, np.uint8),
        np.zeros(64, np.uint8),
        np.zeros(64, np.int64),
        np.full(64, 1024, np.int64),
    )
    with pytest.raises(ProtocolError, match="more than twice the frame"):
        alice.handle(costly)


def test_bad_local_parameters_are_named():
    with pytest.raises(DistillInputError, match="0/1"):
        CascadeAlice(np.array([0, 1, 2, 1]), frame_id=1)
    with pytest.raises(DistillInputError, match="k1 = 3"):
        CascadeBob(np.zeros(64, np.uint8), frame_id=1, seed=1, params=CascadeParams(3, 8, 4))
    with pytest.raises(DistillInputError, match="qber"):
        choose_params(0.0, 1000)
