"""Sifting and parameter estimation: identical positions at both sides, outcomes never sent."""

import numpy as np
import pytest

from distill import (
    DistillInputError,
    EstimationAbort,
    ProtocolError,
    SiftMessage,
    answer_sample,
    conclude_sample,
    decode,
    disclose_sample,
    encode,
    sift_analysing,
    sift_peer,
)


def _epochs(rng, n_local=5000, n_peer=6000, n_pairs=3000):
    li = rng.choice(n_local, n_pairs, replace=False)
    pi = rng.choice(n_peer, n_pairs, replace=False)
    lb = rng.integers(0, 2, n_local).astype(np.uint8)
    pb = rng.integers(0, 2, n_peer).astype(np.uint8)
    return li, pi, lb, pb


@pytest.mark.parametrize("seed", range(5))
def test_both_sides_keep_the_same_pairs_in_the_same_order(seed):
    rng = np.random.default_rng(seed)
    li, pi, lb, pb = _epochs(rng)
    # outcomes encode the pair id, so equal bits at equal positions prove equal pairs
    pair_id = rng.integers(0, 2, li.size).astype(np.uint8)
    lo = np.zeros(lb.size, np.uint8)
    po = np.zeros(pb.size, np.uint8)
    lo[li] = pair_id
    po[pi] = pair_id
    msg, mine = sift_analysing(7, li, pi, lb, pb, lo)
    theirs = sift_peer(decode(encode(msg)), pb, po)
    agree = lb[li] == pb[pi]
    assert len(mine) == len(theirs) == int(agree.sum())
    np.testing.assert_array_equal(mine.bits, theirs.bits)
    np.testing.assert_array_equal(mine.bits, pair_id[agree])
    np.testing.assert_array_equal(mine.bases, theirs.bases)


def test_the_sift_message_carries_no_outcome():
    rng = np.random.default_rng(1)
    li, pi, lb, pb = _epochs(rng)
    lo = rng.integers(0, 2, lb.size).astype(np.uint8)
    msg, _ = sift_analysing(1, li, pi, lb, pb, lo)
    back = decode(encode(msg))
    assert isinstance(back, SiftMessage)
    np.testing.assert_array_equal(back.peer_indices, pi)
    np.testing.assert_array_equal(back.bases, lb[li])
    # flipping every outcome changes nothing on the wire
    msg2, _ = sift_analysing(1, li, pi, lb, pb, 1 - lo)
    assert encode(msg2) == encode(msg)


@pytest.mark.parametrize(
    ("indices", "bases", "words"),
    [
        ([0, 1, 99999], [0, 1, 0], "outside the epoch"),
        ([0, 1, 1], [0, 1, 0], "twice"),
        ([0, 1, 2], [0, 1], "3 indices but 2 bases"),
        ([0, 1, 2], [0, 1, 2], "0/1"),
    ],
)
def test_a_malformed_sift_message_is_refused_by_name(indices, bases, words):
    msg = SiftMessage(3, np.asarray(indices, np.int64), np.asarray(bases, np.uint8))
    with pytest.raises(ProtocolError, match=words):
        sift_peer(msg, np.zeros(100, np.uint8), np.zeros(100, np.uint8))


def test_estimation_agrees_at_both_sides_and_removes_the_sample():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 2, 50_000).astype(np.uint8)
    b = a ^ (rng.random(a.size) < 0.03).astype(np.uint8)
    ann = disclose_sample(5, a, 5000, seed=99)
    reply, at_b = answer_sample(decode(encode(ann)), b, q_tol=0.11)
    at_a = conclude_sample(ann, decode(encode(reply)), a, q_tol=0.11)
    assert at_a.estimate == at_b.estimate
    assert at_a.key.size == at_b.key.size == 45_000
    e = at_a.estimate
    assert e.low < 0.03 < e.high and e.low < e.qber < e.high
    # the remaining keys still differ only by the channel's errors
    assert abs(np.mean(at_a.key != at_b.key) - 0.03) < 0.005


def test_estimation_aborts_above_the_tolerated_qber():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 2, 20_000).astype(np.uint8)
    b = a ^ (rng.random(a.size) < 0.15).astype(np.uint8)
    ann = disclose_sample(1, a, 2000, seed=4)
    with pytest.raises(EstimationAbort, match="exceeds the tolerated"):
        answer_sample(ann, b, q_tol=0.11)


def test_bad_local_input_is_named():
    with pytest.raises(DistillInputError, match="local_outcomes"):
        sift_analysing(1, [0], [0], [0, 1], [0], [0])
