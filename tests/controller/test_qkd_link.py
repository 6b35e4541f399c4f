"""The QKD link engine in-process: two sites' tags -> identical blocks in both key stores.

Synthetic BBM92 tags with a known QBER, Bob's clock 0.3 s ahead and 40 ppm fast,
noise and jitter; every message crosses as a real channel frame and is decoded.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import distill as ds
from channel import PairReply, TimeBasisEpoch, TypedPayload
from controller.qkd_link import AnalyserLink, LinkConfig, LinkConfigError, SenderLink
from controller.qkd_link.testing import run_in_process, two_site_tags
from kms import KeyStore

QBER = 0.02


def _cfg() -> LinkConfig:
    return LinkConfig(
        link="test-link",
        epoch_ps=500_000_000_000,
        frame_bits=2**15,
        acquire_span_ps=3 * 10**12,
        track_window_ps=500_000_000_000,
        finite=ds.FiniteKeyConfig(q_tol=0.06),
        q_expected=0.02,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    tags = two_site_tags(duration_s=12.0, qber=QBER, offset_ps=300_000_000_000, ppm=40.0, seed=3)
    d = tmp_path_factory.mktemp("stores")
    sa, sb = KeyStore(d / "a.sqlite", site_index=0), KeyStore(d / "b.sqlite", site_index=1)
    alice = SenderLink(_cfg(), sa, record_sifted=True)
    bob = AnalyserLink(_cfg(), sb, record_sifted=True)
    log = run_in_process(alice, bob, tags.alice, tags.bob)
    yield tags, alice, bob, log, sa, sb
    sa.close()
    sb.close()


def test_both_stores_hold_identical_blocks(run) -> None:
    _, alice, bob, _, sa, sb = run
    assert len(alice.stored_blocks) >= 2
    assert alice.stored_blocks == bob.stored_blocks
    assert sa.stats().blocks == sb.stats().blocks == len(alice.stored_blocks)
    assert sa.stats().stored_bytes == sb.stats().stored_bytes
    # adding the same block again is idempotent, so both stores hold exactly these bytes
    for fid, key in alice.stored_blocks.items():
        assert sa.add_block(fid, key) is False and sb.add_block(fid, key) is False


def test_lock_found_from_photons_alone(run) -> None:
    _, _, bob, _, _, _ = run
    rep = bob.report()
    assert rep.lock_state == "locked" and rep.lock_acquisitions == 1
    assert abs(rep.ppm - 40.0) < 0.01
    # offset quoted at the lock's reference time of Alice's clock
    lock = bob.tracker.lock
    expected = 300_000_000_000 + 40e-6 * lock.reference_ps
    assert abs(rep.offset_ps - expected) < 2_000
    assert rep.lock_time_s <= 5.0


def test_sifted_keys_same_positions_and_the_synthetic_qber(run) -> None:
    tags, alice, bob, _, _, _ = run
    assert [e for e, _ in alice.sifted_log] == [e for e, _ in bob.sifted_log]
    assert [b.size for _, b in alice.sifted_log] == [b.size for _, b in bob.sifted_log]
    a = np.concatenate([b for _, b in alice.sifted_log])
    b = np.concatenate([b for _, b in bob.sifted_log])
    assert a.size > 80_000
    ber = float(np.mean(a != b))
    sigma = math.sqrt(tags.expected_qber * (1 - tags.expected_qber) / a.size)
    assert abs(ber - tags.expected_qber) < 4 * sigma
    # the per-basis sample estimates cover the synthetic QBER
    rep = bob.report()
    for lo, hi in ((rep.qber_z_low, rep.qber_z_high), (rep.qber_x_low, rep.qber_x_high)):
        assert lo - 3 * (hi - lo) < tags.expected_qber < hi + 3 * (hi - lo)
    assert rep.epochs_answered == alice.report().epochs_answered
    assert 0.9 < rep.ec_efficiency < 1.3


def test_no_outcome_of_alice_crosses_the_channel(run) -> None:
    tags, alice, _, log, _, _ = run
    sent = log.messages("a->b")
    kinds = {m.kind for m in sent if isinstance(m, TypedPayload)}
    assert kinds <= {"sample-result", "reconcile", "frame-end", "frame-abort"}
    for m in sent:
        assert isinstance(m, TimeBasisEpoch | TypedPayload)
        if isinstance(m, TypedPayload) and m.kind == "reconcile":
            assert isinstance(ds.decode(m.fields["data"]), ds.ParityReply | ds.VerifyTag)
        if isinstance(m, TypedPayload) and m.kind == "sample-result":
            assert set(m.fields) == {"errors"} and m.fields["errors"].size == 2
    # Alice with every outcome flipped: her epoch frames are the same bytes
    flipped = two_site_tags(
        duration_s=12.0, qber=QBER, offset_ps=300_000_000_000, ppm=40.0, seed=3, flip_alice=True
    )
    assert any(
        not np.array_equal(x.channels, y.channels)
        for x, y in zip(tags.alice, flipped.alice, strict=True)
    )
    alice2 = SenderLink(_cfg())
    frames = [m for b in flipped.alice for m in alice2.feed_tags(b)]
    from channel import encode_frame, link_id_of

    lid = link_id_of("test-link")
    epoch_frames = [d for dirn, d in log.frames if dirn == "a->b" and d[3] == 16]
    assert len(epoch_frames) == len(frames) == alice.epochs_sent
    for k, (d, m) in enumerate(zip(epoch_frames, frames, strict=True)):
        seq = int.from_bytes(d[10:18], "little")
        assert encode_frame(m, lid, seq) == d, f"epoch {k} differs"


@pytest.mark.parametrize("target", ["parity", "tag"])
def test_tampered_parity_or_tag_never_gives_different_keys(target: str) -> None:
    tags = two_site_tags(duration_s=9.0, qber=QBER, seed=5)
    alice = SenderLink(_cfg())
    bob = AnalyserLink(_cfg())
    hits = {"n": 0}

    def tamper(direction: str, m):
        if direction != "a->b" or not isinstance(m, TypedPayload) or m.kind != "reconcile":
            return m
        inner = ds.decode(m.fields["data"])
        if target == "parity" and isinstance(inner, ds.ParityReply) and inner.seq == 3:
            bits = inner.bits.copy()
            bits[0] ^= 1
            inner = dataclasses.replace(inner, bits=bits)
        elif target == "tag" and isinstance(inner, ds.VerifyTag) and hits["n"] == 0:
            inner = dataclasses.replace(inner, tag=inner.tag ^ 1)
        else:
            return m
        hits["n"] += 1
        return TypedPayload(m.kind, m.epoch, {"data": ds.encode(inner)})

    run_in_process(alice, bob, tags.alice, tags.bob, tamper=tamper)
    assert hits["n"] >= 1
    for fid in set(alice.stored_blocks) | set(bob.stored_blocks):
        assert alice.stored_blocks.get(fid) == bob.stored_blocks.get(fid)
    if target == "tag":
        first = min(bob.records)
        assert first not in alice.stored_blocks and first not in bob.stored_blocks
        assert bob.records[first].state == alice.records[first].state == "discarded"
        assert bob.report().blocks_discarded >= 1
    assert alice.stored_blocks  # the link carried on with the other frames


def test_bad_peer_messages_are_refused_and_counted() -> None:
    alice = SenderLink(_cfg())
    bob = AnalyserLink(_cfg())
    assert alice.receive(PairReply(7, 3, np.array([0]), np.array([1]))) == []
    assert alice.report().refused == 1 and "epoch 7" in alice.report().last_error
    assert bob.receive(TypedPayload("sample-result", 0, {"errors": np.zeros(2, np.uint32)})) == []
    assert bob.receive(TypedPayload("nonsense", 0, {})) == []
    assert bob.report().refused == 2


def test_bad_settings_are_named() -> None:
    with pytest.raises(LinkConfigError, match="frame_bits"):
        LinkConfig(frame_bits=10)
    with pytest.raises(LinkConfigError, match="channel 1 is used twice"):
        LinkConfig(detectors={"H": 1, "V": 1})
    with pytest.raises(LinkConfigError, match="bell_state"):
        LinkConfig(bell_state="phi")


def test_link_records_for_telemetry(run) -> None:
    import telemetry
    from controller.qkd_link import link_record
    from telemetry import parse_lines, to_line

    _, alice, bob, _, sa, sb = run
    for side, store in ((alice, sa), (bob, sb)):
        rec = link_record(
            side.report(),
            node=side.role,
            counters={"bytes_sent_per_s": 10.0, "bytes_received_per_s": 5.0, "connected": 1},
            store_stats=store.stats(),
            time_ns=1_700_000_000_000_000_000,
        )
        assert rec.measurement == "link" and rec.tags["role"] == side.role
        assert rec.fields["blocks_stored"] == len(side.stored_blocks)
        assert rec.fields["store_blocks"] == len(side.stored_blocks)
        assert rec.fields["delivered_keys"] == 0  # no SAE has fetched a key yet
        assert parse_lines(to_line(rec)) == [rec]
        assert isinstance(rec, telemetry.Record)
    sa.issue("sae-m", "sae-s", 2, 32)  # two keys to a master SAE at site A
    rec = link_record(alice.report(), node="alice", store_stats=sa.stats())
    assert rec.fields["delivered_keys"] == 2
    rec = link_record(bob.report(), node="bob")
    assert rec.fields["lock_state"] == "locked" and abs(rec.fields["ppm"] - 40.0) < 0.01
    assert "qber_z_low" in rec.fields
    assert "offset_ps" not in link_record(alice.report(), node="alice").fields  # NaN dropped


def test_lock_lost_in_an_optical_outage_is_reacquired() -> None:
    # the source is dark from 8 s to 11 s of data: the lock is lost, then found again
    tags = two_site_tags(duration_s=20.0, qber=QBER, seed=13, dark_s=(8.0, 11.0))
    alice = SenderLink(_cfg(), record_sifted=True)
    bob = AnalyserLink(_cfg(), record_sifted=True)
    run_in_process(alice, bob, tags.alice, tags.bob)
    rep = bob.report()
    assert rep.lock_losses == 1 and rep.lock_acquisitions == 2
    assert rep.lock_state == "locked" and abs(rep.ppm - 40.0) < 0.01
    assert rep.epochs_answered == alice.report().epochs_answered  # every epoch answered once
    assert [e for e, _ in alice.sifted_log] == [e for e, _ in bob.sifted_log]
    assert alice.stored_blocks and alice.stored_blocks == bob.stored_blocks


def test_a_batch_from_the_past_is_refused_and_the_pump_carries_on() -> None:
    from coincidence import TagBatch
    from controller.qkd_link import LinkPump

    class NoChannel:
        def receive(self, timeout_s: float | None = None):
            return None

        def send(self, message) -> int:
            return 0

    alice = SenderLink(_cfg())
    pump = LinkPump(alice, NoChannel())  # type: ignore[arg-type]
    t = np.arange(0, 10**12, 10**6, dtype=np.int64)
    pump.offer(TagBatch(t, np.zeros(t.size, np.uint8), 0, 10**12))
    pump.offer(TagBatch(t[:5], np.zeros(5, np.uint8), 0, 10**9))  # the clock went back
    pump.step(0.0)
    assert pump.rejected_batches == 1 and "before the previous" in alice.last_error
    assert alice.epochs_sent == 2
