"""The QKD link over real channel endpoints (CURVE) through the WAN emulator, keys out via ETSI 014.

20 ms latency, 10 Mbit/s, 1 % loss and a 2 s outage mid-stream: every epoch is
answered once, both stores hold the same blocks, and a key the master SAE gets
with ``enc_keys`` at site A is the key the slave SAE gets with ``dec_keys`` at B.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import distill as ds
from controller.qkd_link import AnalyserLink, LinkConfig, SenderLink
from controller.qkd_link.testing import run_link_over_wan, two_site_tags
from kms import KeyStore
from kms.testing import MASTER_SAE, SLAVE_SAE, KmeThread, kme_pair_configs, sae_ssl_context


def _cfg() -> LinkConfig:
    return LinkConfig(
        link="wan-link",
        epoch_ps=500_000_000_000,
        frame_bits=2**15,
        acquire_span_ps=3 * 10**12,
        track_window_ps=500_000_000_000,
        finite=ds.FiniteKeyConfig(q_tol=0.06),
        q_expected=0.02,
    )


def _get(url: str, ctx, body: bytes | None = None) -> dict:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        assert r.status == 200
        return json.loads(r.read())


def test_link_over_the_wan_emulator_then_keys_through_014(tmp_path: Path) -> None:
    cfg_a, cfg_b, pki = kme_pair_configs(tmp_path / "kms")
    store_a = KeyStore(cfg_a.store, site_index=cfg_a.site_index)
    store_b = KeyStore(cfg_b.store, site_index=cfg_b.site_index)
    tags = two_site_tags(duration_s=12.0, qber=0.02, offset_ps=-300_000_000_000, ppm=40.0, seed=7)
    alice = SenderLink(_cfg(), store_a, record_sifted=True)
    bob = AnalyserLink(_cfg(), store_b, record_sifted=True)
    rep = run_link_over_wan(tags, alice, bob, tmp_path / "keys", outage_s=2.0)
    # no epoch lost silently, none sifted twice
    assert rep.epochs_sent == len(tags.alice) // 2 - 1
    first = alice.first_epoch
    assert first == 1  # the first whole epoch after Alice's clock read 0.3 s
    last = first + alice.epochs_sent - 1
    # only the last epoch may wait: it needs Bob's tags past the end of his data
    assert alice.unanswered() in ([], [last])
    answered = list(range(first, last + 1 - len(alice.unanswered())))
    assert rep.epochs_lost == rep.epochs_twice == 0
    ra, rb = alice.report(), bob.report()
    assert ra.epochs_unanswered == 0 and rb.epochs_without_lock == 0
    ea = [e for e, _ in alice.sifted_log]
    assert ea == [e for e, _ in bob.sifted_log] == answered
    assert [b.size for _, b in alice.sifted_log] == [b.size for _, b in bob.sifted_log]
    assert rb.lock_state == "locked" and abs(rb.ppm - 40.0) < 0.01
    assert rep.channel_a["bytes_sent"] > 0
    # identical blocks at both sites
    assert rep.keys_identical and rep.ok
    assert len(alice.stored_blocks) >= 2 and any(f % 2 == 0 for f in alice.stored_blocks)
    assert alice.stored_blocks == bob.stored_blocks
    store_a.close()
    store_b.close()
    with KmeThread(cfg_a) as kme_a, KmeThread(cfg_b) as kme_b:
        enc = _get(
            f"{kme_a.url}/api/v1/keys/{SLAVE_SAE}/enc_keys?number=2&size=256",
            sae_ssl_context(pki, MASTER_SAE),
        )
        ids = {"key_IDs": [{"key_ID": k["key_ID"]} for k in enc["keys"]]}
        dec = _get(
            f"{kme_b.url}/api/v1/keys/{MASTER_SAE}/dec_keys",
            sae_ssl_context(pki, SLAVE_SAE),
            json.dumps(ids).encode(),
        )
    assert len(enc["keys"]) == 2
    assert dec["keys"] == enc["keys"]


def test_wegman_carter_over_the_wan_keeps_both_sites_in_step(tmp_path: Path) -> None:
    """Information-theoretic authentication with frames pipelined over 20 ms: every frame's
    tags verify at both sites (its pads come from its own place in the key stream), and
    the bits it used come back out of its block."""
    import dataclasses

    import numpy as np

    cfg = dataclasses.replace(_cfg(), auth="wegman-carter", cascade_prefer="rounds")
    secret = np.random.default_rng(5).bytes(ds.MIN_AUTH_SECRET_BYTES)
    tags = two_site_tags(duration_s=12.0, qber=0.02, offset_ps=-300_000_000_000, ppm=40.0, seed=7)
    alice = SenderLink(cfg, auth_secret=secret)
    bob = AnalyserLink(cfg, auth_secret=secret)
    rep = run_link_over_wan(tags, alice, bob, tmp_path / "keys", outage_s=0.5)
    assert rep.ok and rep.keys_identical
    ra, rb = alice.report(), bob.report()
    assert ra.blocks_stored == rb.blocks_stored >= 2
    assert ra.blocks_discarded == rb.blocks_discarded == 0, rb.last_error
    assert alice.stored_blocks == bob.stored_blocks
    for fid, rec in bob.records.items():
        if rec.state == "stored":
            assert 8 * len(bob.stored_blocks[fid]) >= rec.secret_bits
    assert alice.auth_stream.taken_bits == bob.auth_stream.taken_bits > 0
    assert alice.auth_stream.available_bits == bob.auth_stream.available_bits


def test_wegman_carter_needs_its_secret() -> None:
    import dataclasses

    import pytest

    from controller.qkd_link import LinkConfigError

    cfg = dataclasses.replace(_cfg(), auth="wegman-carter")
    with pytest.raises(LinkConfigError, match="pre-shared secret"):
        SenderLink(cfg)
    with pytest.raises(LinkConfigError, match="at least"):
        AnalyserLink(cfg, auth_secret=b"too short")
    with pytest.raises(LinkConfigError, match=r"link\.auth must be one of"):
        dataclasses.replace(_cfg(), auth="hmac")
    with pytest.raises(LinkConfigError, match="cascade_prefer"):
        dataclasses.replace(_cfg(), cascade_prefer="fast")
