"""The key store: identical blocks at both sites, each key handed out once, nothing lost."""

import itertools
import os
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kms import (
    KeyExhaustedError,
    KeyRange,
    KeyRequestError,
    KeyStore,
    KeyStoreError,
    check_key_id,
    make_key_id,
    parse_key_id,
)
from kms._keyid import ID_KEY_BYTES
from kms.testing import MASTER_SAE, SLAVE_SAE, run_and_kill, store_kill_scenario


def _pair(tmp_path, blocks):
    a = KeyStore(tmp_path / "a.sqlite", site_index=0)
    b = KeyStore(tmp_path / "b.sqlite", site_index=1)
    for block_id, key in blocks.items():
        assert a.add_block(block_id, key)
        assert b.add_block(block_id, key)
    return a, b


@given(
    block=st.integers(0, 2**24 - 1),
    offset=st.integers(0, 2**24 - 1),
    size=st.integers(1, 2**16 - 1),
    id_key=st.binary(min_size=32, max_size=32),
)
@settings(max_examples=200, deadline=None)
def test_key_id_round_trip(block, offset, size, id_key):
    rng = KeyRange(block, offset, size)
    key_id = make_key_id(id_key, rng, "m", "s")
    assert uuid.UUID(key_id).version == 8
    assert parse_key_id(key_id)[0] == rng
    assert check_key_id(key_id, id_key, "m", "s") == rng
    with pytest.raises(KeyRequestError):
        check_key_id(key_id, id_key, "m", "other-slave")


def test_forged_key_id_is_refused(tmp_path):
    key = os.urandom(4096)
    _a, b = _pair(tmp_path, {0: key})
    # A slave SAE that guesses a range without the tag key gets nothing.
    forged = make_key_id(os.urandom(32), KeyRange(0, ID_KEY_BYTES, 32), "m", "s")
    with pytest.raises(KeyRequestError, match="unknown"):
        b.deliver("m", "s", [forged])
    with pytest.raises(KeyRequestError, match="not a UUID"):
        b.deliver("m", "s", ["not-a-uuid"])
    with pytest.raises(KeyRequestError, match="not issued by a qnet KME"):
        b.deliver("m", "s", [str(uuid.uuid4())])


def test_issue_at_one_site_deliver_at_the_other_once(tmp_path):
    blocks = {i: os.urandom(1000) for i in range(4)}
    a, b = _pair(tmp_path, blocks)
    keys = a.issue("m", "s", 10, 32)
    assert len({k for _, k in keys}) == 10
    # Site 0 issues from even blocks only, never the ID key bytes.
    for key_id, _ in keys:
        rng, _ = parse_key_id(key_id)
        assert rng.block_id % 2 == 0 and rng.offset >= ID_KEY_BYTES
    got = b.deliver("m", "s", [kid for kid, _ in keys])
    assert got == keys
    with pytest.raises(KeyRequestError, match="delivered already"):
        b.deliver("m", "s", [keys[0][0]])
    # A failed request delivers nothing: all or none.
    fresh = a.issue("m", "s", 2, 32)
    with pytest.raises(KeyRequestError):
        b.deliver("m", "s", [fresh[0][0], keys[1][0]])
    assert b.deliver("m", "s", [fresh[0][0]]) == [fresh[0]]
    stats = b.stats()
    assert stats.delivered_keys == 11 and stats.delivered_bytes == 11 * 32


def test_two_directions_never_share_bytes(tmp_path):
    blocks = {i: os.urandom(2000) for i in range(6)}
    a, b = _pair(tmp_path, blocks)
    from_a = a.issue("m1", "s1", 40, 64)
    from_b = b.issue("m2", "s2", 40, 64)
    ranges = [parse_key_id(k)[0] for k, _ in from_a + from_b]
    spans = sorted((r.block_id, r.offset, r.offset + r.size) for r in ranges)
    for (b0, _, e0), (b1, s1, _) in itertools.pairwise(spans):
        assert b0 != b1 or e0 <= s1


def test_exhaustion_is_all_or_none(tmp_path):
    a, _ = _pair(tmp_path, {0: os.urandom(ID_KEY_BYTES + 100)})
    with pytest.raises(KeyExhaustedError, match="4 keys of 256 bits asked, 3 available"):
        a.issue("m", "s", 4, 32)
    assert a.stats().issued_keys == 0
    assert len(a.issue("m", "s", 3, 32)) == 3


def test_add_block_is_idempotent_and_refuses_disagreement(tmp_path):
    store = KeyStore(tmp_path / "s.sqlite", site_index=0)
    key = os.urandom(500)
    assert store.add_block(7, key)
    assert not store.add_block(7, key)
    with pytest.raises(KeyStoreError, match="block 7 is stored already with other key bytes"):
        store.add_block(7, os.urandom(500))
    with pytest.raises(KeyRequestError, match="block 8: 10 bytes"):
        store.add_block(8, b"x" * 10)


@pytest.mark.slow
def test_sigkill_during_distillation_loses_no_confirmed_block(tmp_path):
    path = tmp_path / "s.sqlite"
    confirmed = run_and_kill(path, "fill", 50)
    store = KeyStore(path, site_index=0)
    assert store.stats().blocks >= len(confirmed)


@pytest.mark.slow
def test_sigkill_during_delivery_never_hands_a_key_twice(tmp_path):
    path = tmp_path / "s.sqlite"
    store = KeyStore(path, site_index=0)
    for i in range(0, 20, 2):
        store.add_block(i, os.urandom(4096))
    store.close()
    delivered = run_and_kill(path, "issue", 200)
    store = KeyStore(path, site_index=0)
    issued_before = store.stats().issued_keys
    assert issued_before >= len(delivered)
    later = store.issue(MASTER_SAE, SLAVE_SAE, 50, 16)
    before = {ids for _, ids, _ in delivered}
    assert not before & {k for k, _ in later}
    assert not {h for _, _, h in delivered} & {k.hex() for _, k in later}


@pytest.mark.slow
def test_repeated_kills_lose_nothing_and_hand_out_nothing_twice(tmp_path):
    # The scenario of the reliability run, shortened.
    r = store_kill_scenario(tmp_path, 3, max_lines=20)
    assert r["kills_during_distillation"] == r["kills_during_delivery"] == 3
    assert r["confirmed_blocks"] >= 3 and r["keys_delivered"] >= 3
    assert r["confirmed_blocks_lost"] == r["keys_delivered_twice"] == 0
    assert r["keys_delivered_not_marked_used"] == r["unclean_reopens"] == 0
    # A kill costs at most the one write it interrupted.
    assert r["blocks_committed_unconfirmed"] <= 3 and r["keys_used_unconfirmed"] <= 3
    assert r["ok"]


def test_a_key_handed_out_is_erased_from_the_store(tmp_path):
    """Issued at A and delivered at B, a key's bytes are in neither store's files any more."""
    blocks = {i: os.urandom(2000) for i in range(4)}
    a, b = _pair(tmp_path, blocks)
    keys = a.issue("m", "s", 5, 32)
    assert b.deliver("m", "s", [kid for kid, _ in keys]) == keys
    kept = b.issue("m2", "s2", 1, 32)[0][1]  # issued at B, not yet fetched at A
    with pytest.raises(KeyRequestError, match=r"issued by this KME.*dec_keys at the peer"):
        a.deliver("m", "s", [keys[0][0]])  # own keys are not served twice at their site
    for store in (a, b):
        assert store.add_block(0, blocks[0]) is False  # still the same block (digest kept)
        store.close()
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith(("a.", "b."))}
    for _, key in keys:
        assert not any(key in data for data in files.values())
    assert any(kept in data for name, data in files.items() if name.startswith("a."))
    # nothing else was erased: the bytes not handed out are still there
    untouched = blocks[0][ID_KEY_BYTES + 5 * 32 :][:64]
    assert any(untouched in data for data in files.values())
