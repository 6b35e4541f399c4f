"""Sifting and parameter estimation: indices and bases cross the channel, outcomes never do.

The analysing side (the node that found the coincidences) knows each pair as
(its event index, the peer's event index) and, from the channel, the peer's
basis of every event. It sends the peer the peer's indices of all pairs and its
own basis for each; each side then keeps, in pairing order, the pairs whose two
bases agree. The key bits are each side's own outcomes at the kept events, so
both sifted keys have the same length and the same positions.

Parameter estimation: the analysing side draws ``n_sample`` positions of the
frame with a seed it announces, together with its bits there; the peer answers
with its bits there; both compute the same QBER and drop the sample from the key.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._errors import DistillInputError, EstimationAbort, ProtocolError
from ._finite import QberEstimate, qber_interval
from ._messages import MAX_FRAME_BITS, SampleAnnounce, SampleReply, SiftMessage


@dataclass(frozen=True, eq=False)
class SiftedKey:
    """One side's sifted bits of an epoch, in pairing order, and the basis of each (0 Z, 1 X)."""

    epoch: int
    bits: np.ndarray
    bases: np.ndarray

    def __len__(self) -> int:
        return int(self.bits.size)


def _as_index(a: np.ndarray, size: int, what: str, err: type[Exception]) -> np.ndarray:
    idx = np.asarray(a)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise err(f"{what} must be a 1-D integer array, got shape {idx.shape} dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        bad = int(np.flatnonzero((idx < 0) | (idx >= size))[0])
        raise err(f"{what}[{bad}] = {idx[bad]} is outside the epoch's {size} events")
    if np.unique(idx).size != idx.size:
        raise err(f"{what} names an event twice (an event pairs at most once)")
    return idx


def _as_bits(a: np.ndarray, what: str, err: type[Exception]) -> np.ndarray:
    b = np.asarray(a)
    if b.ndim != 1 or (b.size and (b.dtype.kind not in "biu" or int(b.max()) > 1)):
        raise err(f"{what} must be a 1-D array of 0/1 values")
    return b.astype(np.uint8)


def sift_analysing(
    epoch: int,
    local_indices: np.ndarray,
    peer_indices: np.ndarray,
    local_bases: np.ndarray,
    peer_bases: np.ndarray,
    local_outcomes: np.ndarray,
) -> tuple[SiftMessage, SiftedKey]:
    """Analysing side: the message for the peer and its own sifted key.

    ``local_indices[i]`` and ``peer_indices[i]`` are pair i's events in each
    side's epoch; ``*_bases`` are per-event bases (0 Z, 1 X); ``local_outcomes``
    the analysing side's key bit per event (already mapped for the Bell state).
    """
    lb_all = _as_bits(local_bases, "local_bases", DistillInputError)
    pb_all = _as_bits(peer_bases, "peer_bases", DistillInputError)
    out = _as_bits(local_outcomes, "local_outcomes", DistillInputError)
    if out.size != lb_all.size:
        raise DistillInputError(f"local_outcomes has {out.size} events, local_bases {lb_all.size}")
    li = _as_index(local_indices, lb_all.size, "local_indices", DistillInputError)
    pi = _as_index(peer_indices, pb_all.size, "peer_indices", DistillInputError)
    if li.size != pi.size:
        raise DistillInputError(f"{li.size} local but {pi.size} peer indices")
    lb = lb_all[li]
    keep = lb == pb_all[pi]
    msg = SiftMessage(int(epoch), pi, lb)
    return msg, SiftedKey(int(epoch), out[li[keep]], lb[keep])


def sift_peer(msg: SiftMessage, own_bases: np.ndarray, own_outcomes: np.ndarray) -> SiftedKey:
    """Peer side: its sifted key from the analysing side's message (refused if malformed)."""
    ob = _as_bits(own_bases, "own_bases", DistillInputError)
    out = _as_bits(own_outcomes, "own_outcomes", DistillInputError)
    if out.size != ob.size:
        raise DistillInputError(f"own_outcomes has {out.size} events, own_bases {ob.size}")
    idx = _as_index(
        msg.peer_indices, ob.size, f"SiftMessage(epoch {msg.epoch}).peer_indices", ProtocolError
    )
    their = _as_bits(msg.bases, f"SiftMessage(epoch {msg.epoch}).bases", ProtocolError)
    if their.size != idx.size:
        raise ProtocolError(
            f"SiftMessage(epoch {msg.epoch}): {idx.size} indices but {their.size} bases"
        )
    keep = ob[idx] == their
    return SiftedKey(int(msg.epoch), out[idx[keep]], their[keep])


def sample_positions(n_total: int, n_sample: int, seed: int) -> np.ndarray:
    """The sorted sample positions both sides derive from the announced seed (PCG64)."""
    if not 0 < n_sample < n_total <= MAX_FRAME_BITS:
        raise DistillInputError(f"need 0 < n_sample < n_total <= 2^24, got {n_sample}, {n_total}")
    rng = np.random.Generator(np.random.PCG64(seed & 0xFFFFFFFFFFFFFFFF))
    return np.sort(rng.choice(n_total, n_sample, replace=False))


@dataclass(frozen=True, eq=False)
class EstimationResult:
    """The sample's QBER and the key that remains once the sample is removed."""

    estimate: QberEstimate
    key: np.ndarray
    n_sample: int


def _finish(
    bits: np.ndarray, pos: np.ndarray, mine: np.ndarray, theirs: np.ndarray, q_tol: float | None
) -> EstimationResult:
    errors = int(np.count_nonzero(mine != theirs))
    est = qber_interval(errors, pos.size)
    if q_tol is not None and est.qber > q_tol:
        raise EstimationAbort(
            f"sample QBER {est.qber:.4f} ({errors}/{pos.size}) exceeds the tolerated {q_tol}"
        )
    keep = np.ones(bits.size, bool)
    keep[pos] = False
    return EstimationResult(est, bits[keep].copy(), int(pos.size))


def disclose_sample(frame_id: int, bits: np.ndarray, n_sample: int, seed: int) -> SampleAnnounce:
    """Analysing side: announce the sample (seed) with its own bits there."""
    b = _as_bits(bits, "bits", DistillInputError)
    pos = sample_positions(b.size, n_sample, seed)
    return SampleAnnounce(int(frame_id), b.size, int(n_sample), int(seed), b[pos])


def answer_sample(
    msg: SampleAnnounce, bits: np.ndarray, q_tol: float | None = None
) -> tuple[SampleReply, EstimationResult]:
    """Peer side: its bits at the sample, and the estimate (raises EstimationAbort above q_tol)."""
    b = _as_bits(bits, "bits", DistillInputError)
    if msg.n_total != b.size:
        raise ProtocolError(
            f"SampleAnnounce(frame {msg.frame_id}): frame of {msg.n_total} bits, "
            f"peer holds {b.size}"
        )
    if not 0 < msg.n_sample < msg.n_total or msg.bits.size != msg.n_sample:
        raise ProtocolError(
            f"SampleAnnounce(frame {msg.frame_id}): sample of {msg.n_sample} bits is invalid"
        )
    pos = sample_positions(msg.n_total, msg.n_sample, msg.seed)
    reply = SampleReply(msg.frame_id, b[pos])
    return reply, _finish(b, pos, b[pos], msg.bits, q_tol)


def conclude_sample(
    announce: SampleAnnounce, reply: SampleReply, bits: np.ndarray, q_tol: float | None = None
) -> EstimationResult:
    """Analysing side: the estimate from the peer's reply (raises EstimationAbort above q_tol)."""
    b = _as_bits(bits, "bits", DistillInputError)
    if reply.frame_id != announce.frame_id or reply.bits.size != announce.n_sample:
        raise ProtocolError(
            f"SampleReply(frame {reply.frame_id}) with {reply.bits.size} bits does not answer "
            f"frame {announce.frame_id}'s sample of {announce.n_sample}"
        )
    pos = sample_positions(b.size, announce.n_sample, announce.seed)
    return _finish(b, pos, b[pos], reply.bits, q_tol)
