"""A frame end to end: identical delivered keys, and no tampering makes the sides differ."""

import numpy as np
import pytest

from distill import (
    FRAME_AUTH_BYTES,
    MIN_AUTH_SECRET_BYTES,
    AuthenticationError,
    DistillInputError,
    FiniteKeyConfig,
    FrameKeyStream,
    KeyPool,
    KeyPoolExhaustedError,
    ParityReply,
    VerifyResult,
    VerifyTag,
    WegmanCarterAuth,
    decode,
    encode,
)
from distill.testing import correlated_keys, run_frame

N = 1 << 14


def _keys(seed=0, qber=0.03):
    return correlated_keys(N, qber, np.random.default_rng(seed))


def _assert_never_different(alice, bob):
    """The property: a block is delivered only with the other side's equal key."""
    if alice.block is not None and bob.block is not None:
        assert alice.block.key == bob.block.key
        assert alice.block.length_bits == bob.block.length_bits


def test_an_honest_frame_delivers_identical_blocks():
    a, b = _keys()
    alice, bob = run_frame(a, b, qber=0.03, n_test=2000)
    assert alice.state == bob.state == "delivered"
    assert alice.block == bob.block or alice.block.key == bob.block.key
    blk = alice.block
    assert blk.block_id == "test/1" and blk.leak.verification == 64
    assert blk.leak.error_correction == alice.cascade.leak_bits
    assert "key=" not in repr(blk)  # key material never in logs


def _flip_parity(which, bit):
    def tamper(direction, i, data):
        if direction == "a->b" and i == which:
            msg = decode(data)
            if isinstance(msg, ParityReply) and msg.bits.size:
                bits = msg.bits.copy()
                bits[bit % bits.size] ^= 1
                return encode(ParityReply(msg.frame_id, msg.seq, bits))
        return data

    return tamper


@pytest.mark.parametrize("which", [1, 3, 5, 9, 15, 25, 41])
@pytest.mark.parametrize("bit", [0, 7, 1000])
def test_a_tampered_parity_never_yields_different_keys(which, bit):
    a, b = _keys(seed=which)
    alice, bob = run_frame(a, b, qber=0.03, n_test=2000, tamper=_flip_parity(which, bit))
    _assert_never_different(alice, bob)
    if not np.array_equal(bob.cascade.corrected, a):  # the lie corrupted Bob's key
        assert alice.block is None and bob.block is None
        assert bob.state == "discarded"  # by verification, or as a non-converging peer


@pytest.mark.parametrize("field", ["tag", "hash_key", "leak_ec", "pa_seed"])
def test_a_tampered_verification_tag_never_yields_different_keys(field):
    a, b = _keys(seed=2)

    def tamper(direction, i, data):
        msg = decode(data)
        if isinstance(msg, VerifyTag):
            vals = {
                f: getattr(msg, f) for f in ("frame_id", "hash_key", "tag", "leak_ec", "pa_seed")
            }
            vals[field] ^= 1
            return encode(VerifyTag(**vals))
        return data

    alice, bob = run_frame(a, b, qber=0.03, n_test=2000, tamper=tamper)
    _assert_never_different(alice, bob)
    if field in ("tag", "leak_ec"):
        assert alice.block is None and bob.block is None


def test_a_tampered_verify_result_never_yields_different_keys():
    a, b = _keys(seed=3)

    def tamper(direction, i, data):
        msg = decode(data)
        if isinstance(msg, VerifyResult):
            return encode(VerifyResult(msg.frame_id, msg.tag ^ 4, msg.ok))
        return data

    alice, bob = run_frame(a, b, qber=0.03, n_test=2000, tamper=tamper)
    _assert_never_different(alice, bob)
    assert alice.block is None  # Alice saw a tag that is not hers


def test_keys_that_reconcile_wrongly_are_discarded_not_delivered():
    """Too few passes at a high QBER leave errors: verification must catch every one."""
    from distill import CascadeParams

    rng = np.random.default_rng(11)
    discarded = 0
    for _ in range(6):
        a, b = correlated_keys(4096, 0.09, rng)
        from distill import AliceFrame, BobFrame, FiniteKeyConfig, FrameInfo

        info = FrameInfo(1, "t", 2000, 0.09, FiniteKeyConfig(q_tol=0.11))
        alice = AliceFrame(a, info)
        bob = BobFrame(b, info, seed=5, params=CascadeParams(64, 128, 2))
        data = bob.start()
        turn = alice
        while data is not None:
            data = turn.receive(data)
            turn = bob if turn is alice else alice
        if not np.array_equal(bob.cascade.corrected, a):
            discarded += 1
            assert alice.block is None and bob.block is None
        _assert_never_different(alice, bob)
    assert discarded > 0  # the scenario did produce wrong reconciliations


@pytest.mark.parametrize("per_message", [False, True])
def test_wegman_carter_delivers_and_refuses_any_tampered_message(per_message):
    # a tag per message costs 64 bits a message: it needs a larger frame to leave key
    a, b = correlated_keys(1 << (18 if per_message else 17), 0.02, np.random.default_rng(4))
    secret = np.random.default_rng(0).bytes(8 * 4096)
    cfg = FiniteKeyConfig(q_tol=0.04)

    def pair():
        pa, pb = KeyPool(secret), KeyPool(secret)
        wc = (WegmanCarterAuth(pa, per_message=per_message),)
        return pa, pb, wc[0], WegmanCarterAuth(pb, per_message=per_message)

    pa, pb, wa, wb = pair()
    alice, bob = run_frame(a, b, qber=0.02, n_test=20_000, config=cfg, auth=(wa, wb))
    assert alice.state == bob.state == "delivered"
    assert alice.block.key == bob.block.key
    used = alice.block.leak.authentication
    assert used == bob.block.leak.authentication > 0
    if not per_message:
        assert used == 2 * 64  # one transcript tag each way (the hash key is per link)
    assert pa.available_bits == pb.available_bits  # both pools refilled alike

    def tamper(direction, i, data):
        if direction == "a->b" and i == 3:  # a parity reply: flip its last byte
            return data[:-1] + bytes([data[-1] ^ 0x01])
        return data

    pa, pb, wa, wb = pair()
    alice, bob = run_frame(a, b, qber=0.02, n_test=20_000, config=cfg, auth=(wa, wb), tamper=tamper)
    assert alice.block is None and bob.block is None
    assert "tag does not verify" in (alice.reason + bob.reason)
    with pytest.raises(AuthenticationError):
        WegmanCarterAuth(KeyPool(secret), per_message=True).open(b"short")


def test_an_exhausted_key_pool_discards_the_frame_with_a_clear_reason():
    a, b = _keys(seed=6)
    secret = bytes(range(16))  # room for the hash key and one tag only
    alice, bob = run_frame(
        a,
        b,
        qber=0.03,
        n_test=2000,
        auth=(WegmanCarterAuth(KeyPool(secret)), WegmanCarterAuth(KeyPool(secret))),
    )
    assert alice.block is None and bob.block is None
    assert "key pool" in alice.reason + bob.reason


def _tag(auth: WegmanCarterAuth) -> bytes:
    """The transcript tag an authenticator puts on one final message (its first pad)."""
    return auth.seal(b"the frame's transcript", final=True)


def test_frame_key_streams_stay_in_step_whatever_the_order_of_use():
    """Frames pipelined over a WAN start and end at different moments at the two sites:
    each frame's pads come from its own place in the stream, so the tags still agree."""
    secret = np.random.default_rng(1).bytes(MIN_AUTH_SECRET_BYTES)
    per_secret = (MIN_AUTH_SECRET_BYTES - 8) // FRAME_AUTH_BYTES  # 8 bytes: the hash key
    refills = [bytes([i]) * FRAME_AUTH_BYTES for i in range(1, 40)]
    a, b = FrameKeyStream(secret), FrameKeyStream(secret)
    tags_a = [_tag(a.take_frame()) for _ in range(per_secret)]
    tags_b = []
    for i in range(per_secret):  # B refills early, between its takes
        tags_b.append(_tag(b.take_frame()))
        b.add(refills[i])
    assert tags_a == tags_b
    with pytest.raises(KeyPoolExhaustedError, match="pre-shared secret"):
        a.take_frame()  # A's refills have not come yet: this frame is discarded
    tags_b.append(_tag(b.take_frame()))  # B had them: B's frame goes ahead (then aborted)
    for r in refills[:per_secret]:
        a.add(r)
    # the next frames use the same bytes at both sites: no drift after the miss
    assert [_tag(a.take_frame()) for _ in range(5)] == [_tag(b.take_frame()) for _ in range(5)]
    assert len(set(tags_b)) == len(tags_b)  # never the same pad twice
    assert "key" not in repr(a).replace("FrameKeyStream", "")  # no key material in logs


def test_a_frame_key_stream_needs_a_real_secret():
    with pytest.raises(DistillInputError, match=str(MIN_AUTH_SECRET_BYTES)):
        FrameKeyStream(b"short")


def test_a_frame_refills_what_it_used_from_its_block():
    a, b = correlated_keys(1 << 17, 0.02, np.random.default_rng(4))
    secret = np.random.default_rng(0).bytes(MIN_AUTH_SECRET_BYTES)
    sa, sb = FrameKeyStream(secret), FrameKeyStream(secret)
    before = sa.available_bits
    cfg = FiniteKeyConfig(q_tol=0.04)
    auth = (sa.take_frame(), sb.take_frame())
    alice, bob = run_frame(a, b, qber=0.02, n_test=20_000, config=cfg, auth=auth)
    assert alice.state == bob.state == "delivered" and alice.block.key == bob.block.key
    assert alice.block.leak.authentication == 8 * FRAME_AUTH_BYTES
    assert sa.available_bits == sb.available_bits == before  # used, then given back
