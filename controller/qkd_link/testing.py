"""Shared by tests, benchmarks and the demo: synthetic two-site tags and an in-process wire.

:func:`two_site_tags` makes each site's tagger stream of a BBM92 (phi+) source with a
known QBER, each tagger on its own clock (Bob's offset and ppm against Alice's), with
noise and jitter. :func:`run_in_process` drives a :class:`SenderLink` and an
:class:`AnalyserLink` through real channel frames (``channel.encode_frame`` /
``decode_frame``), so a test can capture, decode or tamper with every message.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from channel import Message, decode_frame, encode_frame, link_id_of
from coincidence import TagBatch

from ._engine import AnalyserLink, SenderLink

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
) -> TwoSiteTags:
    """Both sites' tags of ``duration_s`` of a phi+ source with channels H0 V1 D2 A3.

    Alice's clock is the true time; Bob's reads ``offset_ps + t (1 + ppm 1e-6)``.
    Each pair is detected at Alice with probability ``eta_a``, at Bob with
    ``eta_b``; each side draws its basis at random; in equal bases Bob's outcome
    is Alice's flipped with probability ``qber``; each side has ``noise_hz`` of
    dark counts spread over its detectors. ``flip_alice`` swaps her H<->V and
    D<->A (every outcome flipped, same times and bases).
    """
    rng = np.random.default_rng(seed)
    t_ps = int(duration_s * 1e12)
    n = rng.poisson(pair_rate_hz * duration_s)
    t = np.sort(rng.integers(0, t_ps, n))
    da = rng.random(n) < eta_a
    db = rng.random(n) < eta_b
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
    tb = (offset_ps + tb_true * (1.0 + ppm * 1e-6)).astype(np.int64)
    order = np.argsort(tb, kind="stable")
    tb, chb = tb[order], chb[order]
    step = int(batch_s * 1e12)
    alice = _batches(ta, cha, 0, t_ps, step)
    b0 = int(offset_ps)
    b1 = int(offset_ps + t_ps * (1.0 + ppm * 1e-6))
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
