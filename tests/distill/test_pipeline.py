"""Sifting -> estimation -> reconciliation -> verification -> amplification, end to end."""

import numpy as np

from distill import (
    FiniteKeyConfig,
    answer_sample,
    conclude_sample,
    decode,
    disclose_sample,
    encode,
    optimal_sample_size,
    sift_analysing,
    sift_peer,
)
from distill.testing import run_frame


def test_two_sites_end_with_the_same_key_block():
    rng = np.random.default_rng(21)
    n_events, n_pairs, qber = 900_000, 700_000, 0.02
    # each side's epoch: bases and outcomes per event; pairs link events of both sides
    bob_idx = rng.choice(n_events, n_pairs, replace=False)  # Bob analyses
    alice_idx = rng.choice(n_events, n_pairs, replace=False)
    a_bases = rng.integers(0, 2, n_events).astype(np.uint8)
    b_bases = rng.integers(0, 2, n_events).astype(np.uint8)
    a_out = rng.integers(0, 2, n_events).astype(np.uint8)
    b_out = rng.integers(0, 2, n_events).astype(np.uint8)
    # entangled pairs: Bob's outcome is Alice's, flipped with probability qber
    flip = (rng.random(n_pairs) < qber).astype(np.uint8)
    b_out[bob_idx] = a_out[alice_idx] ^ flip

    msg, bob_key = sift_analysing(1, bob_idx, alice_idx, b_bases, a_bases, b_out)
    alice_key = sift_peer(decode(encode(msg)), a_bases, a_out)
    assert len(alice_key) == len(bob_key) > 300_000

    cfg = FiniteKeyConfig(q_tol=0.04)
    k = optimal_sample_size(len(bob_key), 0.02, cfg)
    ann = disclose_sample(1, bob_key.bits, k, seed=77)
    reply, at_alice = answer_sample(decode(encode(ann)), alice_key.bits, q_tol=cfg.q_tol)
    at_bob = conclude_sample(ann, decode(encode(reply)), bob_key.bits, q_tol=cfg.q_tol)
    assert at_alice.estimate == at_bob.estimate
    assert at_alice.estimate.low <= qber <= at_alice.estimate.high

    alice, bob = run_frame(
        at_alice.key, at_bob.key, qber=at_bob.estimate.qber, n_test=k, config=cfg, frame_id=9
    )
    assert alice.state == bob.state == "delivered"
    assert alice.block.key == bob.block.key and alice.block.length_bits > 50_000
    assert alice.block.block_id == bob.block.block_id == "test/9"
    assert alice.block.sifted_bits == at_alice.key.size
