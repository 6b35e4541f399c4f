"""The QKD link engine, sans-I/O: tags and peer messages in, messages for the peer out.

Two roles, one per site, each reading only its own tagger:

* :class:`SenderLink` (Alice) cuts her tags into epochs of her clock and sends each
  epoch's detection times and one basis bit per detection
  (``channel.time_basis_epoch``: no field can carry an outcome). She keeps her
  outcomes until the analyser's :class:`channel.PairReply` names the paired events.
* :class:`AnalyserLink` (Bob) finds the clock relation from the photon timing alone
  (``coincidence.ClockTracker``), maps his tags onto her clock, pairs them with her
  times inside the coincidence window and answers every epoch, in order, with the
  paired positions and his bases (``distill.sift_analysing``); both keep the pairs
  whose bases agree, in pairing order (``distill.sift_peer``).

Sifted bits accumulate into frames of ``frame_bits``, cut identically at both sites.
Per frame (the analyser drives): he announces a random sample with *his* bits there
(``distill.disclose_sample``; sample size from the finite-key analysis,
``distill.optimal_sample_size``); she answers with the error counts per basis only,
so none of her outcome bits crosses the channel; both drop the sample and abort a
frame whose sample QBER exceeds the tolerated one. Then ``distill.BobFrame`` /
``distill.AliceFrame`` run Cascade, the verification hash and Toeplitz
amplification over ``TypedPayload`` messages. She stores a verified block first and
says so (``frame-end``); he stores it only then, under the same block id. A frame
that fails anywhere is discarded at both sites and counted, never stored.

Messages (``TypedPayload.kind``, ``epoch`` = frame id): ``sample`` (B->A, a
``distill.SampleAnnounce``), ``sample-result`` (A->B, errors per basis),
``reconcile`` (both ways, distill session bytes), ``frame-end`` (A->B, stored flag),
``frame-abort`` (either way).
"""

from __future__ import annotations

import math
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

import distill as ds
from channel import ChannelError, Message, PairReply, TimeBasisEpoch, TypedPayload
from channel import time_basis_epoch as make_epoch
from coincidence import TagBatch, h2

from ._clock import make_tracker
from ._config import LinkConfig, LinkConfigError
from ._pairing import pair_indices

_CONF_1SIGMA = 0.6827
#: Frames cut after one epoch's sifted bits at most; a frame's id (= its block id in the
#: key stores) is ``epoch * FRAMES_PER_EPOCH + k``, so both sites name it alike and ids
#: continue across a restart as long as the sender's tagger clock does.
FRAMES_PER_EPOCH = 8


class BlockSink(Protocol):
    """Where verified blocks go: ``kms.KeyStore`` (``add_block`` is idempotent)."""

    def add_block(self, block_id: int, key: bytes) -> bool: ...


@dataclass
class FrameRecord:
    """What happened to one frame (for telemetry and tests).

    Attributes:
        frame_id: the frame (= block id in the key stores).
        state: ``estimating``, ``reconciling``, ``stored``, ``aborted`` (sample QBER above
            the tolerated), ``discarded`` (failed verification or a protocol error),
            ``empty`` (the finite-key length left no key).
        sifted_bits: bits of the frame before the sample was removed.
        sample_bits: bits disclosed for the estimate.
        errors_z, sample_z, errors_x, sample_x: the sample's errors and size per basis.
        qber: the sample QBER; ``actual_errors``: errors Cascade corrected (analyser).
        leak_ec_bits: bits disclosed by error correction.
        secret_bits: length of the stored block.
        reason: why a frame was not stored.
    """

    frame_id: int
    state: str = "estimating"
    sifted_bits: int = 0
    sample_bits: int = 0
    errors_z: int = 0
    sample_z: int = 0
    errors_x: int = 0
    sample_x: int = 0
    qber: float = math.nan
    actual_errors: int = -1
    leak_ec_bits: int = 0
    secret_bits: int = 0
    reason: str = ""

    @property
    def ec_efficiency(self) -> float:
        """``f = leak_EC / (n h2(e))``, e the corrected error rate (else the sample QBER)."""
        n = self.sifted_bits - self.sample_bits
        if n <= 0 or self.leak_ec_bits <= 0:
            return math.nan
        e = self.actual_errors / n if self.actual_errors >= 0 else self.qber
        return self.leak_ec_bits / (n * h2(e)) if 0.0 < e < 0.5 else math.nan


@dataclass
class _Frame:
    record: FrameRecord
    bits: np.ndarray
    bases: np.ndarray
    announce: ds.SampleAnnounce | None = None
    session: ds.AliceFrame | ds.BobFrame | None = None
    key_in: np.ndarray | None = None
    block: ds.KeyBlock | None = None
    auth: ds.Authenticator | None = None
    """Wegman-Carter: this frame's authenticator, taken when the frame was cut."""
    auth_error: str = ""
    """Wegman-Carter: why the frame has no authenticator (the pool ran dry)."""


@dataclass(frozen=True)
class LinkReport:
    """One site's link state: the numbers telemetry publishes (NaN where not known here).

    Rates are per second of the sender's clock data answered (``data_s``).
    """

    link: str
    role: str
    lock_state: str
    offset_ps: float
    offset_uncertainty_ps: float
    ppm: float
    ppm_uncertainty: float
    lock_time_s: float
    lock_acquisitions: int
    lock_losses: int
    epochs: int
    epochs_answered: int
    epochs_unanswered: int
    epochs_without_lock: int
    pairs: int
    sifted_bits: int
    data_s: float
    sifted_rate_bps: float
    qber_z: float
    qber_z_low: float
    qber_z_high: float
    qber_x: float
    qber_x_low: float
    qber_x_high: float
    frames: int
    blocks_stored: int
    blocks_discarded: int
    frames_aborted: int
    frames_empty: int
    secret_bits: int
    secret_rate_bps: float
    ec_efficiency: float
    refused: int
    last_error: str
    auth_pool_bits: int = -1
    """Wegman-Carter: secret bits left in the authentication key stream (-1: channel auth)."""

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (NaN kept) for telemetry and JSON status."""
        return dict(self.__dict__)


def _typed(kind: str, frame_id: int, **fields: Any) -> TypedPayload:
    return TypedPayload(kind, int(frame_id), fields)


def _data(msg: TypedPayload) -> bytes:
    value = msg.fields.get("data")
    if not isinstance(value, bytes):
        raise ds.ProtocolError(f"{msg.kind}(frame {msg.epoch}) lacks its 'data' bytes")
    return value


class _LinkSide:
    """What both roles share: the sifted-bit accumulator, frames, stores and counters."""

    role = ""

    def __init__(
        self,
        cfg: LinkConfig,
        store: BlockSink | None = None,
        *,
        random_bits: Callable[[int], int] = secrets.randbits,
        record_sifted: bool = False,
        auth_secret: bytes | None = None,
    ) -> None:
        self.cfg = cfg
        self.auth_stream: ds.FrameKeyStream | None = None
        """Wegman-Carter key material of the frames (``cfg.auth == "wegman-carter"``)."""
        if cfg.auth == "wegman-carter":
            if auth_secret is None:
                raise LinkConfigError("link.auth wegman-carter needs the pre-shared secret")
            try:
                self.auth_stream = ds.FrameKeyStream(auth_secret)
            except ds.DistillInputError as e:
                raise LinkConfigError(f"link.auth: {e}") from None
        self.store = store
        self._random_bits = random_bits
        self._basis_lut, self._outcome_lut = cfg.tables()
        self._acc_bits: list[np.ndarray] = []
        self._acc_bases: list[np.ndarray] = []
        self._acc_n = 0
        self.frames: dict[int, _Frame] = {}
        self.records: dict[int, FrameRecord] = {}
        self.record_sifted = record_sifted
        self.sifted_log: list[tuple[int, np.ndarray]] = []
        """(epoch, sifted bits) per answered epoch, kept only with ``record_sifted`` (tests)."""
        self.stored_blocks: dict[int, bytes] = {}
        self.epochs_answered = 0
        self.epochs_unanswered = 0
        self.epochs_without_lock = 0
        self.pairs = 0
        self.sifted_bits = 0
        self.data_ps = 0
        self.refused = 0
        self.last_error = ""
        self._sample_err = np.zeros(2, np.int64)
        self._sample_n = np.zeros(2, np.int64)

    # -- sifted bits -> frames -------------------------------------------------------
    def _add_sifted(self, epoch: int, key: ds.SiftedKey) -> list[int]:
        if self.record_sifted:
            self.sifted_log.append((epoch, key.bits.copy()))
        self.sifted_bits += len(key)
        if len(key):
            self._acc_bits.append(key.bits)
            self._acc_bases.append(key.bases)
            self._acc_n += len(key)
        cut: list[int] = []
        n = self.cfg.frame_bits
        while self._acc_n >= n and len(cut) < FRAMES_PER_EPOCH:
            bits = np.concatenate(self._acc_bits)
            bases = np.concatenate(self._acc_bases)
            self._acc_bits, self._acc_bases = [bits[n:]], [bases[n:]]
            self._acc_n -= n
            fid = epoch * FRAMES_PER_EPOCH + len(cut)
            rec = FrameRecord(fid, sifted_bits=n)
            self.frames[fid] = fr = _Frame(rec, bits[:n].copy(), bases[:n].copy())
            if self.auth_stream is not None:  # both sites cut the same frames in this order
                try:
                    fr.auth = self.auth_stream.take_frame()
                except ds.KeyPoolExhaustedError as e:
                    fr.auth_error = str(e)
            self.records[fid] = rec
            cut.append(fid)
        return cut

    def _note_sample(self, rec: FrameRecord, ez: int, nz: int, ex: int, nx: int) -> None:
        rec.errors_z, rec.sample_z, rec.errors_x, rec.sample_x = ez, nz, ex, nx
        rec.sample_bits = nz + nx
        rec.qber = (ez + ex) / max(1, nz + nx)
        self._sample_err += (ez, ex)
        self._sample_n += (nz, nx)

    def _end(self, frame_id: int, state: str, reason: str = "") -> None:
        fr = self.frames.pop(frame_id, None)
        rec = self.records.get(frame_id)
        if rec is not None:
            rec.state = state
            rec.reason = reason
        if fr is not None:
            fr.bits = fr.bases = np.zeros(0, np.uint8)

    def _store(self, frame_id: int, block: ds.KeyBlock) -> bool:
        rec = self.records[frame_id]
        try:
            if self.store is not None:
                self.store.add_block(frame_id, block.key)
        except Exception as e:  # a store refusal discards the block, never crashes the link
            self.last_error = f"key store refused block {frame_id}: {e}"
            self._end(frame_id, "discarded", self.last_error)
            return False
        self.stored_blocks[frame_id] = block.key
        rec.secret_bits = block.length_bits
        rec.leak_ec_bits = block.leak.error_correction
        self._end(frame_id, "stored")
        return True

    def _auth_ready(self, fid: int, out: list[Message]) -> bool:
        """False (frame aborted, the peer told) when Wegman-Carter has no key for it."""
        fr = self.frames[fid]
        if self.auth_stream is None or fr.auth is not None:
            return True
        self.last_error = f"frame {fid}: {fr.auth_error}"
        self._abort(fid, f"authentication: {fr.auth_error}", out, tell_peer=True)
        return False

    def _refuse(self, why: str) -> None:
        self.refused += 1
        self.last_error = why

    def _abort(self, frame_id: int, reason: str, out: list[Message], tell_peer: bool) -> None:
        state = "aborted" if reason.startswith("sample QBER") else "discarded"
        if reason.startswith("finite-key"):
            state = "empty"
        self._end(frame_id, state, reason)
        if tell_peer:
            out.append(_typed("frame-abort", frame_id, code=np.zeros(1, np.uint8)))

    # -- messages ----------------------------------------------------------------------
    def receive(self, msg: Message) -> list[Message]:
        """One message from the peer -> the messages to send back (never raises on bad input)."""
        out: list[Message] = []
        try:
            self._receive(msg, out)
        except (ds.DistillError, ChannelError) as e:
            self._refuse(f"{type(msg).__name__}: {e}")
            fid = getattr(msg, "epoch", None)
            if isinstance(msg, TypedPayload) and fid in self.frames:
                self._abort(int(fid), f"protocol error: {e}", out, tell_peer=True)
        return out

    def _receive(self, msg: Message, out: list[Message]) -> None:
        raise NotImplementedError

    def _reconcile(self, msg: TypedPayload, out: list[Message]) -> ds.AliceFrame | ds.BobFrame:
        fr = self.frames.get(msg.epoch)
        if fr is None or fr.session is None:
            raise ds.ProtocolError(f"reconcile message for frame {msg.epoch}, not reconciling")
        try:
            reply = fr.session.receive(_data(msg))
        except ds.ProtocolError as e:
            self._abort(msg.epoch, f"protocol error: {e}", out, tell_peer=True)
            self.last_error = str(e)
            return fr.session
        if reply is not None:
            out.append(_typed("reconcile", msg.epoch, data=reply))
        return fr.session

    # -- report --------------------------------------------------------------------------
    def _lock_fields(self) -> dict[str, Any]:
        nan = math.nan
        return {
            "lock_state": "n/a",
            "offset_ps": nan,
            "offset_uncertainty_ps": nan,
            "ppm": nan,
            "ppm_uncertainty": nan,
            "lock_time_s": nan,
            "lock_acquisitions": 0,
            "lock_losses": 0,
        }

    def _epochs(self) -> int:
        return self.epochs_answered + self.epochs_unanswered

    def report(self) -> LinkReport:
        """The link's numbers now (cumulative since start)."""
        data_s = self.data_ps / 1e12
        recs = list(self.records.values())
        stored = [r for r in recs if r.state == "stored"]
        secret = sum(r.secret_bits for r in stored)
        leak = sum(r.leak_ec_bits for r in stored)
        denom = 0.0
        for r in stored:
            f = r.ec_efficiency
            if math.isfinite(f) and f > 0:
                denom += r.leak_ec_bits / f
        q = []
        for b in (0, 1):
            n, e = int(self._sample_n[b]), int(self._sample_err[b])
            if n:
                est = ds.qber_interval(e, n, _CONF_1SIGMA)
                q += [est.qber, est.low, est.high]
            else:
                q += [math.nan] * 3
        return LinkReport(
            link=self.cfg.link,
            role=self.role,
            epochs=self._epochs(),
            epochs_answered=self.epochs_answered,
            epochs_unanswered=self.epochs_unanswered,
            epochs_without_lock=self.epochs_without_lock,
            pairs=self.pairs,
            sifted_bits=self.sifted_bits,
            data_s=data_s,
            sifted_rate_bps=self.sifted_bits / data_s if data_s > 0 else math.nan,
            qber_z=q[0],
            qber_z_low=q[1],
            qber_z_high=q[2],
            qber_x=q[3],
            qber_x_low=q[4],
            qber_x_high=q[5],
            frames=len(recs),
            blocks_stored=len(stored),
            blocks_discarded=sum(r.state == "discarded" for r in recs),
            frames_aborted=sum(r.state == "aborted" for r in recs),
            frames_empty=sum(r.state == "empty" for r in recs),
            secret_bits=secret,
            secret_rate_bps=secret / data_s if data_s > 0 else math.nan,
            ec_efficiency=leak / denom if denom > 0 else math.nan,
            refused=self.refused,
            last_error=self.last_error,
            auth_pool_bits=-1 if self.auth_stream is None else self.auth_stream.available_bits,
            **self._lock_fields(),
        )


class SenderLink(_LinkSide):
    """Alice: epochs of her tags out, pair replies and distillation messages in."""

    role = "sender"

    def __init__(self, cfg: LinkConfig, store: BlockSink | None = None, **kw: Any) -> None:
        super().__init__(cfg, store, **kw)
        self._t: list[np.ndarray] = []
        self._ch: list[np.ndarray] = []
        self.first_epoch: int | None = None
        """Number of the first epoch sent (set at the first batch)."""
        self._next_epoch = 0
        self._covered_ps: int | None = None
        self._pending: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
        self.epochs_sent = 0

    def _epochs(self) -> int:
        return self.epochs_sent

    def feed_tags(self, batch: TagBatch) -> list[Message]:
        """Her tagger's next batch -> the epoch messages that are complete.

        Epoch ``k`` covers ``[k E, (k + 1) E)`` of her clock (``E = epoch_ps``), so epoch
        numbers continue across a restart of the daemon while the tagger's clock runs on;
        the first epoch is the first whole one after the first batch begins.
        """
        e_ps = self.cfg.epoch_ps
        if self.first_epoch is None:
            self._next_epoch = -(-int(batch.begin_ps) // e_ps)
            self.first_epoch = self._next_epoch
        if self._covered_ps is not None and batch.begin_ps < self._covered_ps:
            raise ValueError(
                f"sender tags: batch begins at {batch.begin_ps} ps, before the previous "
                f"batch's end {self._covered_ps} ps"
            )
        keep = self._basis_lut[batch.channels] != 255
        self._t.append(batch.timestamps[keep])
        self._ch.append(batch.channels[keep])
        self._covered_ps = int(batch.end_ps)
        out: list[Message] = []
        while (self._next_epoch + 1) * e_ps <= self._covered_ps:
            begin = self._next_epoch * e_ps
            end = begin + e_ps
            t = np.concatenate(self._t) if len(self._t) != 1 else self._t[0]
            ch = np.concatenate(self._ch) if len(self._ch) != 1 else self._ch[0]
            i0 = int(np.searchsorted(t, begin))
            i = int(np.searchsorted(t, end))
            ep = TagBatch(t[i0:i], ch[i0:i], begin, end)
            self._t, self._ch = [t[i:]], [ch[i:]]
            msg = make_epoch(
                self._next_epoch, ep, self.cfg.basis_of_channel(), self.cfg.resolution_ps
            )
            self._pending[self._next_epoch] = (
                self._basis_lut[ep.channels],
                self._outcome_lut[ep.channels],
                end - begin,
            )
            self._next_epoch += 1
            self.epochs_sent += 1
            out.append(msg)
        return out

    def unanswered(self) -> list[int]:
        """Epochs sent whose pair reply has not come yet."""
        return sorted(self._pending)

    def _receive(self, msg: Message, out: list[Message]) -> None:
        if isinstance(msg, PairReply):
            self._pair_reply(msg, out)
        elif isinstance(msg, TypedPayload):
            if msg.kind == "sample":
                self._sample(msg, out)
            elif msg.kind == "reconcile":
                session = self._reconcile(msg, out)
                if session.state != "running" and msg.epoch in self.frames:
                    self._finish(msg.epoch, session, out)
            elif msg.kind == "frame-abort":
                if msg.epoch in self.frames:
                    self._end(msg.epoch, "discarded", "the analyser discarded the frame")
            else:
                raise ds.ProtocolError(f"unexpected typed payload {msg.kind!r} at the sender")
        else:
            raise ds.ProtocolError(f"unexpected {type(msg).__name__} at the sender")

    def _pair_reply(self, msg: PairReply, out: list[Message]) -> None:
        if msg.epoch not in self._pending:
            raise ds.ProtocolError(f"pair reply for epoch {msg.epoch}, which is not awaited")
        # an older epoch still waiting was skipped by the analyser: neither side keeps it
        for e in [e for e in self._pending if e < msg.epoch]:
            del self._pending[e]
            self.epochs_unanswered += 1
        bases, outcomes, span = self._pending[msg.epoch]
        if msg.n_events != bases.size:
            raise ds.ProtocolError(
                f"pair reply for epoch {msg.epoch} counts {msg.n_events} events, "
                f"the epoch sent had {bases.size}"
            )
        key = ds.sift_peer(ds.SiftMessage(msg.epoch, msg.indices, msg.bases), bases, outcomes)
        del self._pending[msg.epoch]
        self.epochs_answered += 1
        self.pairs += int(msg.indices.size)
        self.data_ps += span
        self._add_sifted(msg.epoch, key)

    def _sample(self, msg: TypedPayload, out: list[Message]) -> None:
        fr = self.frames.get(msg.epoch)
        ann = ds.decode(_data(msg))
        if not isinstance(ann, ds.SampleAnnounce) or ann.frame_id != msg.epoch:
            raise ds.ProtocolError(f"sample message of frame {msg.epoch} is not its announcement")
        if fr is None or fr.session is not None:
            raise ds.ProtocolError(f"sample for frame {msg.epoch}, which is not awaiting one")
        if not self._auth_ready(msg.epoch, out):
            return
        _, est = ds.answer_sample(ann, fr.bits, None)
        pos = ds.sample_positions(fr.bits.size, ann.n_sample, ann.seed)
        wrong = fr.bits[pos] != ann.bits
        b = fr.bases[pos]
        ez, ex = int(np.count_nonzero(wrong & (b == 0))), int(np.count_nonzero(wrong & (b == 1)))
        self._note_sample(
            fr.record, ez, int(np.count_nonzero(b == 0)), ex, int(np.count_nonzero(b))
        )
        out.append(_typed("sample-result", msg.epoch, errors=np.array([ez, ex], np.uint32)))
        q_tol = self.cfg.finite.q_tol
        if est.estimate.qber > q_tol:
            self._end(msg.epoch, "aborted", f"sample QBER {est.estimate.qber:.4f} > {q_tol}")
            return
        info = ds.FrameInfo(
            msg.epoch, self.cfg.link, ann.n_sample, est.estimate.qber, self.cfg.finite
        )
        fr.session = ds.AliceFrame(est.key, info, random_bits=self._random_bits, auth=fr.auth)
        fr.record.state = "reconciling"

    def _finish(
        self, frame_id: int, session: ds.AliceFrame | ds.BobFrame, out: list[Message]
    ) -> None:
        fr = self.frames[frame_id]
        fr.record.leak_ec_bits = int(session.cascade.leak_bits)
        stored = False
        if session.state == "delivered" and session.block is not None:
            stored = self._store(frame_id, session.block)
        elif session.state == "empty":
            self._end(frame_id, "empty", session.reason)
        else:
            self._end(frame_id, "discarded", session.reason)
        out.append(_typed("frame-end", frame_id, stored=np.array([int(stored)], np.uint8)))


class AnalyserLink(_LinkSide):
    """Bob: finds the clocks' relation, pairs, answers each epoch, drives the distillation."""

    role = "analyser"

    def __init__(
        self, cfg: LinkConfig, store: BlockSink | None = None, *, tracker: Any = None, **kw: Any
    ) -> None:
        super().__init__(cfg, store, **kw)
        self.tracker = tracker if tracker is not None else make_tracker(cfg)
        self._flip = cfg.flip_of_basis()
        self._t = np.zeros(0, np.int64)
        self._ch = np.zeros(0, np.uint8)
        self._b_end: int | None = None
        self._pending: deque[TimeBasisEpoch] = deque()
        self._a_first: int | None = None
        self._a_last: int | None = None
        self._clk_a: list[np.ndarray] = []
        self._clk_b: list[np.ndarray] = []
        self._clk_tried_ps = -(2**62)
        self.lock_state = "acquiring"
        self.lock_time_s = math.nan
        self._state: Any = None
        self._last_q = cfg.q_expected

    # -- inputs --------------------------------------------------------------------------
    def feed_tags(self, batch: TagBatch) -> list[Message]:
        """His tagger's next batch -> the replies (and frame messages) that became possible."""
        if self._b_end is not None and batch.begin_ps < self._b_end:
            raise ValueError(
                f"analyser tags: batch begins at {batch.begin_ps} ps, before the previous "
                f"batch's end {self._b_end} ps"
            )
        keep = self._basis_lut[batch.channels] != 255
        t = batch.timestamps[keep]
        self._t = np.concatenate((self._t, t))
        self._ch = np.concatenate((self._ch, batch.channels[keep]))
        self._b_end = int(batch.end_ps)
        self._feed_clock(np.zeros(0, np.int64), t)
        out: list[Message] = []
        self._advance(out)
        return out

    def _feed_clock(self, ta: np.ndarray, tb: np.ndarray) -> None:
        """Hand the tags to the clock tracker.

        At once while locked (tracking is cheap); while acquiring, only once per
        ``acquire_span_ps / 4`` of new sender data, since each acquisition attempt
        correlates the whole buffer over every frequency hypothesis.
        """
        if ta.size:
            self._clk_a.append(ta)
        if tb.size:
            self._clk_b.append(tb)
        if self.tracker.lock is None:
            retry_ps = max(self.cfg.epoch_ps, self.cfg.acquire_span_ps // 4)
            if self._a_last is None or self._a_last - self._clk_tried_ps < retry_ps:
                return
            self._clk_tried_ps = self._a_last
        empty = np.zeros(0, np.int64)
        a = np.concatenate(self._clk_a) if self._clk_a else empty
        b = np.concatenate(self._clk_b) if self._clk_b else empty
        self._clk_a, self._clk_b = [], []
        state = self.tracker.feed(a, b)
        self._state = state
        was = self.lock_state
        self.lock_state = "locked" if self.tracker.lock is not None else state.state
        first_lock = was != "locked" and self.lock_state == "locked"
        a0, a1 = self._a_first, self._a_last
        if first_lock and math.isnan(self.lock_time_s) and a0 is not None and a1 is not None:
            self.lock_time_s = (a1 - a0) / 1e12

    def _receive(self, msg: Message, out: list[Message]) -> None:
        if isinstance(msg, TimeBasisEpoch):
            if self._a_first is None:
                self._a_first = int(msg.begin_ps)
            self._a_last = int(msg.end_ps)
            self._pending.append(msg)
            self._feed_clock(msg.times_ps, np.zeros(0, np.int64))
            self._advance(out)
        elif isinstance(msg, TypedPayload):
            if msg.kind == "sample-result":
                self._sample_result(msg, out)
            elif msg.kind == "reconcile":
                session = self._reconcile(msg, out)
                fr = self.frames.get(msg.epoch)
                if fr is not None and session.state != "running":
                    fr.record.leak_ec_bits = int(session.cascade.leak_bits)
            elif msg.kind == "frame-end":
                self._frame_end(msg)
            elif msg.kind == "frame-abort":
                if msg.epoch in self.frames:
                    self._end(msg.epoch, "discarded", "the sender discarded the frame")
            else:
                raise ds.ProtocolError(f"unexpected typed payload {msg.kind!r} at the analyser")
        else:
            raise ds.ProtocolError(f"unexpected {type(msg).__name__} at the analyser")

    # -- pairing -------------------------------------------------------------------------
    def _advance(self, out: list[Message]) -> None:
        margin = self.cfg.window_ps + 10_000_000  # 10 us beyond the window for lock error
        while self._pending:
            ep = self._pending[0]
            lock = self.tracker.lock
            if lock is not None:
                need = lock.offset_at(ep.end_ps) + ep.end_ps + margin
                if self._b_end is None or self._b_end < need:
                    return
                self._pending.popleft()
                self._answer(ep, lock, margin, out)
            elif len(self._pending) > self.cfg.max_pending_epochs:
                self._pending.popleft()
                self._answer(ep, None, margin, out)
            else:
                break
        if self.tracker.lock is None and self._b_end is not None:
            keep_ps = (
                self.cfg.max_pending_epochs + 2
            ) * self.cfg.epoch_ps + 2 * self.cfg.max_offset_ps
            i = int(np.searchsorted(self._t, self._b_end - keep_ps))
            self._t, self._ch = self._t[i:], self._ch[i:]

    def _answer(self, ep: TimeBasisEpoch, lock: Any, margin: float, out: list[Message]) -> None:
        n = int(ep.times_ps.size)
        if lock is None or n == 0:
            ia = ib = np.zeros(0, np.int64)
            lo = 0
            local_b = local_o = np.zeros(0, np.uint8)
        else:
            lo = int(np.searchsorted(self._t, lock.offset_at(ep.begin_ps) + ep.begin_ps - margin))
            hi = int(np.searchsorted(self._t, lock.offset_at(ep.end_ps) + ep.end_ps + margin))
            tb = lock.to_clock_a(self._t[lo:hi])
            ia, ib = pair_indices(ep.times_ps, tb, self.cfg.window_ps / 2)
            ch = self._ch[lo:hi]
            local_b = self._basis_lut[ch]
            local_o = self._outcome_lut[ch] ^ self._flip[local_b]
            # tags well before this epoch's end can pair with nothing later: drop them
            cut = int(np.searchsorted(self._t, lock.offset_at(ep.end_ps) + ep.end_ps - margin))
            self._t, self._ch = self._t[cut:], self._ch[cut:]
        smsg, key = ds.sift_analysing(ep.epoch, ib, ia, local_b, ep.bases, local_o)
        out.append(PairReply(ep.epoch, n, smsg.peer_indices, smsg.bases))
        self.epochs_answered += 1
        self.data_ps += int(ep.end_ps - ep.begin_ps)
        if lock is None:
            self.epochs_without_lock += 1
        self.pairs += int(ia.size)
        for fid in self._add_sifted(ep.epoch, key):
            self._start_frame(fid, out)

    # -- frames --------------------------------------------------------------------------
    def _start_frame(self, fid: int, out: list[Message]) -> None:
        if not self._auth_ready(fid, out):
            return
        fr = self.frames[fid]
        q = min(max(self._last_q, 0.005), 0.8 * self.cfg.finite.q_tol)
        try:
            k = ds.optimal_sample_size(fr.bits.size, q, self.cfg.finite)
        except ds.DistillInputError as e:
            self._abort(fid, f"finite-key: {e}", out, tell_peer=True)
            return
        seed = self._random_bits(63)
        fr.announce = ds.disclose_sample(fid, fr.bits, k, seed)
        out.append(_typed("sample", fid, data=ds.encode(fr.announce)))

    def _sample_result(self, msg: TypedPayload, out: list[Message]) -> None:
        fr = self.frames.get(msg.epoch)
        if fr is None or fr.announce is None or fr.session is not None:
            raise ds.ProtocolError(f"sample result for frame {msg.epoch}, which awaits none")
        errs = msg.fields.get("errors")
        pos = ds.sample_positions(fr.bits.size, fr.announce.n_sample, fr.announce.seed)
        b = fr.bases[pos]
        nz, nx = int(np.count_nonzero(b == 0)), int(np.count_nonzero(b))
        if not isinstance(errs, np.ndarray) or errs.size != 2 or errs.dtype.kind not in "iu":
            raise ds.ProtocolError(f"sample result of frame {msg.epoch}: 'errors' is malformed")
        ez, ex = int(errs[0]), int(errs[1])
        if not (0 <= ez <= nz and 0 <= ex <= nx):
            raise ds.ProtocolError(
                f"sample result of frame {msg.epoch}: errors {ez}/{ex} exceed the sample {nz}/{nx}"
            )
        self._note_sample(fr.record, ez, nz, ex, nx)
        est = ds.qber_interval(ez + ex, nz + nx)
        q_tol = self.cfg.finite.q_tol
        if est.qber > q_tol:
            self._end(msg.epoch, "aborted", f"sample QBER {est.qber:.4f} > {q_tol}")
            return
        self._last_q = est.qber
        keep = np.ones(fr.bits.size, bool)
        keep[pos] = False
        fr.key_in = fr.bits[keep]
        info = ds.FrameInfo(msg.epoch, self.cfg.link, nz + nx, est.qber, self.cfg.finite)
        session = ds.BobFrame(
            fr.key_in,
            info,
            seed=self._random_bits(63),
            auth=fr.auth,
            prefer=self.cfg.cascade_prefer,
        )
        fr.session = session
        fr.record.state = "reconciling"
        out.append(_typed("reconcile", msg.epoch, data=session.start()))

    def _frame_end(self, msg: TypedPayload) -> None:
        fr = self.frames.get(msg.epoch)
        if fr is None:
            raise ds.ProtocolError(f"frame-end for frame {msg.epoch}, which is not open")
        flag = msg.fields.get("stored")
        stored = isinstance(flag, np.ndarray) and flag.size == 1 and int(flag[0]) == 1
        s = fr.session
        if s is not None and s.state == "delivered" and s.block is not None:
            if fr.key_in is not None and isinstance(s, ds.BobFrame):
                fr.record.actual_errors = int(np.count_nonzero(s.cascade.corrected != fr.key_in))
            if stored:
                self._store(msg.epoch, s.block)
            else:
                self._end(msg.epoch, "discarded", "the sender did not store the block")
        elif s is not None and s.state == "empty":
            self._end(msg.epoch, "empty", s.reason)
        else:
            reason = s.reason if s is not None else "no session"
            self._end(msg.epoch, "discarded", reason)
            if stored:
                self.last_error = (
                    f"frame {msg.epoch}: the sender stored a block this site discarded"
                )

    def _lock_fields(self) -> dict[str, Any]:
        lock = self.tracker.lock
        d = super()._lock_fields()
        d["lock_state"] = self.lock_state
        d["lock_time_s"] = self.lock_time_s
        d["lock_acquisitions"] = int(getattr(self.tracker, "acquisitions", 0))
        d["lock_losses"] = int(getattr(self.tracker, "losses", 0))
        if lock is not None:
            d.update(
                offset_ps=float(lock.offset_ps),
                offset_uncertainty_ps=float(lock.offset_uncertainty_ps),
                ppm=float(lock.ppm),
                ppm_uncertainty=float(lock.ppm_uncertainty),
            )
        return d
