"""Shared by tests, benchmarks and the demo: synthetic two-site tags and an in-process wire.

:func:`two_site_tags` makes each site's tagger stream of a BBM92 (phi+) source with a
known QBER, each tagger on its own clock (Bob's offset and ppm against Alice's), with
noise and jitter. :func:`run_in_process` drives a :class:`SenderLink` and an
:class:`AnalyserLink` through real channel frames (``channel.encode_frame`` /
``decode_frame``), so a test can capture, decode or tamper with every message.
:func:`run_link_over_wan` runs both over real CURVE channel ends through the WAN
emulator (latency, bandwidth, loss, outages).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from channel import (
    ChannelEndpoint,
    Message,
    decode_frame,
    encode_frame,
    generate_keys,
    link_id_of,
    load_key_pair,
)
from channel.testing import WanEmulator
from coincidence import TagBatch

from ._engine import AnalyserLink, SenderLink
from ._runner import LinkPump

Tamper = Callable[[str, Message], Message]
"""``tamper(direction, message)`` may return a changed message (``"a->b"`` or ``"b->a"``)."""


@dataclass
class TwoSiteTags:
    """Each site's batches (on its own clock) and what the link should measure."""

    alice: list[TagBatch]
    bob: list[TagBatch]
    expected_qber: float
    """The pairs' QBER plus the accidentals' share (an accidental is wrong half the time)."""
    coincidence_rate_hz: float


def _batches(t: np.ndarray, ch: np.ndarray, begin: int, end: int, step: int) -> list[TagBatch]:
    out = []
    edges = [*range(begin, end, step), end]
    idx = np.searchsorted(t, edges)
    for k in range(len(edges) - 1):
        i, j = int(idx[k]), int(idx[k + 1])
        out.append(TagBatch(t[i:j], ch[i:j], edges[k], edges[k + 1]))
    return out


def two_site_tags(
    *,
    duration_s: float = 12.0,
    pair_rate_hz: float = 200_000.0,
    eta_a: float = 0.3,
    eta_b: float = 0.3,
    noise_hz: float = 5_000.0,
    qber: float = 0.02,
    offset_ps: int = 300_000_000_000,
    ppm: float = 40.0,
    jitter_ps: float = 50.0,
    window_ps: int = 2_000,
    batch_s: float = 0.25,
    seed: int = 1,
    flip_alice: bool = False,
    dark_s: tuple[float, float] | None = None,
) -> TwoSiteTags:
    """Both sites' tags of ``duration_s`` of a phi+ source with channels H0 V1 D2 A3.

    Alice's clock reads the true time ``t``, Bob's ``offset_ps + t (1 + ppm 1e-6)`` (both
    shifted by ``-offset_ps`` when the offset is negative, so no tag is negative).
    Each pair is detected at Alice with probability ``eta_a``, at Bob with
    ``eta_b``; each side draws its basis at random; in equal bases Bob's outcome
    is Alice's flipped with probability ``qber``; each side has ``noise_hz`` of
    dark counts spread over its detectors. ``flip_alice`` swaps her H<->V and
    D<->A (every outcome flipped, same times and bases). ``dark_s = (t0, t1)``
    blocks the source between those true times (an optical outage: noise only).
    """
    rng = np.random.default_rng(seed)
    t_ps = int(duration_s * 1e12)
    n = rng.poisson(pair_rate_hz * duration_s)
    t = np.sort(rng.integers(0, t_ps, n))
    da = rng.random(n) < eta_a
    db = rng.random(n) < eta_b
    if dark_s is not None:
        dark = (t >= dark_s[0] * 1e12) & (t < dark_s[1] * 1e12)
        da &= ~dark
        db &= ~dark
    ba = rng.integers(0, 2, n)
    bb = rng.integers(0, 2, n)
    oa = rng.integers(0, 2, n)
    same = ba == bb
    ob = np.where(same, oa ^ (rng.random(n) < qber), rng.integers(0, 2, n))
    if flip_alice:
        oa = oa ^ 1
    ca = (2 * ba + oa).astype(np.uint8)
    cb = (2 * bb + ob).astype(np.uint8)

    def site(
        keep: np.ndarray, ch: np.ndarray, rng_site: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        tt = t[keep] + np.rint(rng_site.normal(0.0, jitter_ps, int(keep.sum()))).astype(np.int64)
        m = rng_site.poisson(noise_hz * duration_s)
        tn = rng_site.integers(0, t_ps, m)
        cn = rng_site.integers(0, 4, m).astype(np.uint8)
        tt = np.concatenate((tt, tn))
        cc = np.concatenate((ch[keep], cn))
        order = np.argsort(tt, kind="stable")
        tt, cc = tt[order], cc[order]
        inside = (tt >= 0) & (tt < t_ps)
        return tt[inside], cc[inside]

    # flip_alice must not change any time: Alice's jitter and noise come from their own stream
    ta, cha = site(da, ca, np.random.default_rng(seed + 1000))
    tb_true, chb = site(db, cb, np.random.default_rng(seed + 2000))
    base = max(0, -int(offset_ps))  # a common shift keeps both clocks' tags non-negative
    ta = ta + base
    tb = (base + offset_ps + tb_true * (1.0 + ppm * 1e-6)).astype(np.int64)
    order = np.argsort(tb, kind="stable")
    tb, chb = tb[order], chb[order]
    step = int(batch_s * 1e12)
    alice = _batches(ta, cha, base, base + t_ps, step)
    b0 = int(base + offset_ps)
    b1 = int(base + offset_ps + t_ps * (1.0 + ppm * 1e-6))
    bob = _batches(tb, chb, b0, b1, int(step * (1.0 + ppm * 1e-6)))
    r_a = ta.size / duration_s
    r_b = tb.size / duration_s
    r_c = pair_rate_hz * eta_a * eta_b
    r_acc = r_a * r_b * window_ps * 1e-12
    f_acc = r_acc / (r_c + r_acc)
    return TwoSiteTags(alice, bob, qber * (1 - f_acc) + 0.5 * f_acc, r_c)


@dataclass
class WireLog:
    """Every frame that crossed, as bytes, per direction (``"a->b"``, ``"b->a"``)."""

    frames: list[tuple[str, bytes]]

    def messages(self, direction: str) -> list[Message]:
        """The decoded messages of one direction, in order."""
        return [m for m in (self._decode(d) for dd, d in self.frames if dd == direction)]

    def _decode(self, data: bytes) -> Message:
        lid = int.from_bytes(data[6:10], "little")
        return decode_frame(data, lid).message


def run_in_process(
    alice: SenderLink,
    bob: AnalyserLink,
    alice_batches: Sequence[TagBatch],
    bob_batches: Sequence[TagBatch],
    *,
    tamper: Tamper | None = None,
    drop_a_to_b: Callable[[Message], bool] | None = None,
) -> WireLog:
    """Feed both sites their batches in step and carry every message as a real channel frame.

    Each message is encoded with ``channel.encode_frame`` and decoded on the other
    side with ``decode_frame`` (the bytes are logged); ``tamper`` may change a
    message before it is encoded. Runs until both sites are quiet.
    """
    lid = link_id_of(alice.cfg.link)
    log = WireLog([])
    seq = {"a->b": 0, "b->a": 0}
    q: deque[tuple[str, Message]] = deque()

    def send(direction: str, msgs: list[Message]) -> None:
        for m in msgs:
            q.append((direction, m))

    def pump() -> None:
        while q:
            direction, m = q.popleft()
            if tamper is not None:
                m = tamper(direction, m)
            if direction == "a->b" and drop_a_to_b is not None and drop_a_to_b(m):
                continue
            seq[direction] += 1
            data = encode_frame(m, lid, seq[direction])
            log.frames.append((direction, data))
            got = decode_frame(data, lid).message
            if direction == "a->b":
                send("b->a", bob.receive(got))
            else:
                send("a->b", alice.receive(got))

    ib = 0
    for k, a in enumerate(alice_batches):
        send("a->b", alice.feed_tags(a))
        # Bob's tagger runs alongside: feed his batches up to the same true time
        while ib < len(bob_batches) and ib <= k:
            send("b->a", bob.feed_tags(bob_batches[ib]))
            ib += 1
        pump()
    while ib < len(bob_batches):
        send("b->a", bob.feed_tags(bob_batches[ib]))
        ib += 1
        pump()
    pump()
    return log


@dataclass
class WanLinkReport:
    """What a two-site run over real channel ends counted (see :func:`run_link_over_wan`)."""

    alice: SenderLink
    bob: AnalyserLink
    epochs_sent: int
    epochs_answered: int
    epochs_lost: int
    epochs_twice: int
    blocks_a: int
    blocks_b: int
    keys_identical: bool
    duration_s: float
    channel_a: dict[str, int]
    channel_b: dict[str, int]

    @property
    def ok(self) -> bool:
        """Every epoch but the last answered once, and both sites' blocks identical."""
        return (
            self.epochs_lost == 0
            and self.epochs_twice == 0
            and self.keys_identical
            and self.blocks_a > 0
        )


def run_link_over_wan(
    tags: TwoSiteTags,
    alice: SenderLink,
    bob: AnalyserLink,
    key_dir: Path,
    *,
    latency_s: float = 0.02,
    bandwidth_bps: float | None = 10e6,
    loss: float = 0.01,
    outage_s: float = 2.0,
    outage_at_batch: int | None = None,
    outage_mode: Literal["blackhole", "reset"] = "blackhole",
    pace_s: float = 0.05,
    timeout_s: float = 240.0,
    seed: int = 3,
) -> WanLinkReport:
    """Run both engines over two CURVE channel ends through a :class:`~channel.testing.WanEmulator`.

    Alice's end connects through the emulator to Bob's; each site's pump runs in its
    own thread. One batch per site is offered every ``pace_s`` (its tagger's pace);
    after batch ``outage_at_batch`` (default: half way) the emulator has an outage of
    ``outage_s``. Waits (up to ``timeout_s``) until every epoch but the last (which
    needs Bob's tags beyond the end of the data) is answered and no frame is open.
    """
    key_dir.mkdir(parents=True, exist_ok=True)
    ka = load_key_pair(generate_keys("alice", key_dir, overwrite=True)[1])
    kb = load_key_pair(generate_keys("bob", key_dir, overwrite=True)[1])
    link = alice.cfg.link
    stop = threading.Event()
    t0 = time.monotonic()
    at = len(tags.alice) // 2 if outage_at_batch is None else outage_at_batch
    with ChannelEndpoint(
        role="server", address="tcp://127.0.0.1:0", keys=kb, peer_public_key=ka.public, link=link
    ) as end_b:
        port = int(end_b.address.rsplit(":", 1)[1])
        wan = WanEmulator(
            ("127.0.0.1", port),
            latency_s=latency_s,
            bandwidth_bps=bandwidth_bps,
            loss=loss,
            seed=seed,
            lifetime_s=timeout_s + outage_s + len(tags.alice) * pace_s + 120,
        )
        with (
            wan,
            ChannelEndpoint(
                role="client", address=wan.address, keys=ka, peer_public_key=kb.public, link=link
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
                for k in range(max(len(tags.alice), len(tags.bob))):
                    if k < len(tags.alice):
                        pumps[0].offer(tags.alice[k])
                    if k < len(tags.bob):
                        pumps[1].offer(tags.bob[k])
                    if k == at and outage_s > 0:
                        wan.outage(outage_s, mode=outage_mode)
                    time.sleep(pace_s)
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline:
                    ra, _ = pumps[0].report()
                    rb, _ = pumps[1].report()
                    want = alice.epochs_sent - 1
                    answered = ra.epochs_answered + ra.epochs_unanswered
                    quiet = ra.frames == rb.frames and not alice.frames and not bob.frames
                    if answered >= want and rb.epochs_answered >= want and quiet:
                        break
                    time.sleep(0.2)
            finally:
                stop.set()
                for t in threads:
                    t.join(60)
            ca, cb = end_a.counters(), end_b.counters()
    ra, rb = alice.report(), bob.report()
    seen = [e for e, _ in bob.sifted_log] if bob.record_sifted else []
    twice = len(seen) - len(set(seen))
    answered = ra.epochs_answered
    common = set(alice.stored_blocks) | set(bob.stored_blocks)
    same = all(alice.stored_blocks.get(f) == bob.stored_blocks.get(f) for f in common)
    return WanLinkReport(
        alice=alice,
        bob=bob,
        epochs_sent=alice.epochs_sent,
        epochs_answered=answered,
        epochs_lost=max(0, alice.epochs_sent - 1 - answered),
        epochs_twice=twice,
        blocks_a=len(alice.stored_blocks),
        blocks_b=len(bob.stored_blocks),
        keys_identical=same,
        duration_s=time.monotonic() - t0,
        channel_a=ca,
        channel_b=cb,
    )
