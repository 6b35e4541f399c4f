"""The QKD link over real channel endpoints (CURVE) through the WAN emulator, keys out via ETSI 014.

20 ms latency, 10 Mbit/s, 1 % loss and a 2 s outage mid-stream: every epoch is
answered once, both stores hold the same blocks, and a key the master SAE gets
with ``enc_keys`` at site A is the key the slave SAE gets with ``dec_keys`` at B.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import coincidence
import distill as ds
from channel import ChannelEndpoint, generate_keys, load_key_pair
from channel.testing import WanEmulator
from controller.qkd_link import AnalyserLink, LinkConfig, LinkPump, SenderLink
from controller.qkd_link.testing import two_site_tags
from kms import KeyStore
from kms.testing import MASTER_SAE, SLAVE_SAE, KmeThread, kme_pair_configs, sae_ssl_context

pytestmark = pytest.mark.skipif(
    not hasattr(coincidence, "ClockTracker"), reason="coincidence.ClockTracker not available"
)


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
    keys = tmp_path / "keys"
    ka = load_key_pair(generate_keys("alice", keys)[1])
    kb = load_key_pair(generate_keys("bob", keys)[1])
    cfg_a, cfg_b, pki = kme_pair_configs(tmp_path / "kms")
    store_a = KeyStore(cfg_a.store, site_index=cfg_a.site_index)
    store_b = KeyStore(cfg_b.store, site_index=cfg_b.site_index)
    tags = two_site_tags(duration_s=12.0, qber=0.02, offset_ps=-300_000_000_000, ppm=40.0, seed=7)
    alice = SenderLink(_cfg(), store_a, record_sifted=True)
    bob = AnalyserLink(_cfg(), store_b, record_sifted=True)
    stop = threading.Event()
    with ChannelEndpoint(
        role="server",
        address="tcp://127.0.0.1:0",
        keys=kb,
        peer_public_key=ka.public,
        link="wan-link",
    ) as end_b:
        port = int(end_b.address.rsplit(":", 1)[1])
        wan = WanEmulator(
            ("127.0.0.1", port),
            latency_s=0.02,
            bandwidth_bps=10e6,
            loss=0.01,
            seed=3,
            lifetime_s=600,
        )
        with (
            wan,
            ChannelEndpoint(
                role="client",
                address=wan.address,
                keys=ka,
                peer_public_key=kb.public,
                link="wan-link",
            ) as end_a,
        ):
            pumps = [LinkPump(alice, end_a), LinkPump(bob, end_b)]

            def loop(p: LinkPump) -> None:
                while not stop.is_set():
                    p.step(0.02)

            threads = [threading.Thread(target=loop, args=(p,), daemon=True) for p in pumps]
            for t in threads:
                t.start()
            try:
                for k, (a, b) in enumerate(zip(tags.alice, tags.bob, strict=True)):
                    pumps[0].offer(a)
                    pumps[1].offer(b)
                    if k == len(tags.alice) // 2:
                        wan.outage(2.0, mode="blackhole")
                    time.sleep(0.05)
                n_sent = len(tags.alice)  # one epoch per two batches of 0.25 s
                deadline = time.monotonic() + 240
                while time.monotonic() < deadline:
                    ra, _ = pumps[0].report()
                    rb, _ = pumps[1].report()
                    done = ra.epochs_answered == rb.epochs_answered == alice.epochs_sent - 1
                    if done and ra.frames == rb.frames and not alice.frames and not bob.frames:
                        break
                    time.sleep(0.2)
            finally:
                stop.set()
                for t in threads:
                    t.join(30)
            counters_a = end_a.counters()
    assert alice.epochs_sent == n_sent // 2
    ra, rb = alice.report(), bob.report()
    # no epoch lost silently, none sifted twice: the last epoch waits for data Bob never got
    assert alice.unanswered() == [alice.epochs_sent - 1]
    assert ra.epochs_unanswered == rb.epochs_unanswered == 0
    ea = [e for e, _ in alice.sifted_log]
    assert ea == [e for e, _ in bob.sifted_log] == list(range(alice.epochs_sent - 1))
    assert [b.size for _, b in alice.sifted_log] == [b.size for _, b in bob.sifted_log]
    assert rb.lock_state == "locked" and abs(rb.ppm - 40.0) < 0.01
    assert counters_a["bytes_sent"] > 0
    # identical blocks at both sites
    assert len(alice.stored_blocks) >= 2 and 0 in alice.stored_blocks
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
