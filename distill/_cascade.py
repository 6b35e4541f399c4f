"""Cascade information reconciliation as two message-driven state machines.

Follows the optimised Cascade of J. Martinez-Mateo, C. Pacher, M. Peev,
A. Ciurana and V. Martin, "Demystifying the information reconciliation protocol
Cascade", Quantum Inf. Comput. 15, 453 (2015) (arXiv:1407.3257): power-of-two
block sizes, a first block size near ``1/QBER`` and a second about four times
larger, then passes of two blocks of about ``n/2`` bits (their "k_i = n/2 for
i >= 3", a BICONF-like check of random halves as in W. T. Buttler et al.,
PRA 67, 052303 (2003)), full backward cascading, and no parity asked twice nor
asked when it follows from known ones (a right half from its parent and left
half; the last block of a pass and the second half from the frame's parity,
known from the first pass). Every block parity of every pass depends only on
Alice's key, so all of them travel in the first reply: the passes' work is then
scheduled lowest pass first (the cheapest bisection), which is sequential
Cascade with the cascade effect, in fewer rounds.

Alice answers; Bob drives. Leak = the parity bits Alice sent (she counts them
herself; a Bob that asks more only makes her count more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._bits import pack_bits
from ._cascade_kernels import Backend
from ._errors import DistillInputError, ProtocolError
from ._messages import MAX_FRAME_BITS, EcDone, EcStart, ParityQuery, ParityReply

_PERM_SALT = 0x243F6A8885A308D3
_U64 = 0xFFFFFFFFFFFFFFFF
_BACKENDS: dict[str, Backend] = {}


def backend(name: str = "numba") -> Backend:
    """The kernels of ``name`` (``"numba"`` or the interpreted ``"python"`` baseline)."""
    if name not in _BACKENDS:
        _BACKENDS[name] = Backend(name)
    return _BACKENDS[name]


@dataclass(frozen=True)
class CascadeParams:
    """Block sizes and number of passes of one frame.

    Attributes:
        k1: first-pass block size (power of two).
        k2: second-pass block size (power of two).
        passes: total passes; passes 3.. split the frame into two random halves.
    """

    k1: int
    k2: int
    passes: int

    def check(self, n: int, where: str) -> None:
        """Refuse block sizes not a power of two in [2, 2^24], or passes outside 2..64."""
        for name, k in (("k1", self.k1), ("k2", self.k2)):
            if k < 2 or k > MAX_FRAME_BITS or k & (k - 1):
                raise ProtocolError(f"{where}: {name} = {k} is not a power of two in [2, 2^24]")
        if not 2 <= self.passes <= 64:
            raise ProtocolError(f"{where}: passes = {self.passes} outside 2..64")
        if not 2 <= n <= MAX_FRAME_BITS:
            raise ProtocolError(f"{where}: frame of {n} bits outside 2..2^24")


def choose_params(qber: float, n: int, prefer: str = "leak") -> CascadeParams:
    """Block sizes for an expected ``qber`` (tuned on simulated frames, see docs/DISTILL.md).

    ``k2 = 4 k1`` (both capped at n/2), 16 passes, and ``k1`` by preset:
    ``prefer="leak"``: ``k1 = 2^round(log2(1.1 / qber))`` (smallest leak in a sweep
    of k1, k2 over 2^16-bit frames; hundreds of rounds);
    ``prefer="rounds"``: ``k1 = 2^floor(log2(1.0 / qber))`` (up to ~5x fewer round
    trips for a few % more leak: for long-latency links).
    """
    if prefer not in _K1_SCALES:
        raise DistillInputError(f"prefer must be 'leak' or 'rounds', got {prefer!r}")
    if not (0.0 < qber < 0.5):
        raise DistillInputError(f"expected qber must be in (0, 0.5), got {qber}")
    if n < 4:
        raise DistillInputError(f"frame must have at least 4 bits, got {n}")
    cap = 1 << max(1, (n // 2).bit_length() - 1)
    x = math.log2(_K1_SCALES[prefer] / qber)
    k1 = min(cap, 1 << max(1, round(x) if prefer == "leak" else math.floor(x)))
    k2 = min(cap, k1 * _K2_FACTOR)
    return CascadeParams(k1=k1, k2=k2, passes=_PASSES)


_K1_SCALES = {"leak": 1.1, "rounds": 1.0}
_K2_FACTOR = 4
_PASSES = 16


def _check_key(key: np.ndarray, who: str) -> np.ndarray:
    k = np.asarray(key)
    if k.ndim != 1 or k.size < 4 or k.size > MAX_FRAME_BITS:
        raise DistillInputError(
            f"{who}: key must be a 1-D array of 4..2^24 bits, got shape {k.shape}"
        )
    if k.dtype.kind not in "biu" or (k.size and int(k.max()) > 1):
        raise DistillInputError(f"{who}: key must hold 0/1 integers, got dtype {k.dtype}")
    return np.ascontiguousarray(k, dtype=np.uint8).copy()


class _Side:
    """What both sides compute from their own key: the layers' orders and packed bits."""

    def __init__(
        self, key: np.ndarray, n: int, params: CascadeParams, seed: int, be: Backend
    ) -> None:
        self.be = be
        self.n, self.params, self.seed = n, params, np.uint64(seed & _U64)
        pad = -(-n // 8) * 8
        buf0, buf1 = np.zeros(pad, np.uint8), np.zeros(pad, np.uint8)
        self.order1 = be.feistel_order(n, np.uint64((seed ^ _PERM_SALT) & _U64))
        buf0[:n] = key
        np.take(key, self.order1, out=buf1[:n])
        self.key, self.ordered1 = buf0[:n], buf1[:n]
        self.words0, self.words1 = buf0.view(np.uint64), buf1.view(np.uint64)
        self.packed = pack_bits(key)
        self.nb0 = -(-n // params.k1)
        self.nb1 = -(-n // params.k2)

    def top_parities(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Block parities of pass 1 and 2, and of half 0 of each random-halves pass."""
        p0 = np.empty(self.nb0, np.uint8)
        p1 = np.empty(self.nb1, np.uint8)
        self.be.block_parities(self.key, self.words0, self.n, self.params.k1, p0)
        self.be.block_parities(self.ordered1, self.words1, self.n, self.params.k2, p1)
        return p0, p1, self.half_parities()

    def half_parities(self) -> np.ndarray:
        """Parity of half 0 of each random-halves pass (index = pass - 1; 0, 1 unused)."""
        ph = np.zeros(self.params.passes, np.uint8)
        for lay in range(2, self.params.passes):
            ph[lay] = self.be.masked_parity(self.packed, self.seed, lay, 0, 0, self.n)
        return ph


class CascadeAlice:
    """Alice's side: answers Bob's parity queries about her (reference) key."""

    def __init__(self, key: np.ndarray, *, frame_id: int, backend_name: str = "numba") -> None:
        self.key = _check_key(key, "CascadeAlice")
        self.frame_id = int(frame_id)
        self._be = backend(backend_name)
        self._side: _Side | None = None
        self._seq = 0
        self.leak_bits = 0
        self.rounds = 0
        self.done = False

    def handle(self, msg: EcStart | ParityQuery | EcDone) -> ParityReply | None:
        """One message from Bob -> the reply (``None`` after EcDone)."""
        if self.done:
            raise ProtocolError(f"frame {self.frame_id}: reconciliation already finished")
        if msg.frame_id != self.frame_id:
            raise ProtocolError(f"message for frame {msg.frame_id}, expected frame {self.frame_id}")
        if isinstance(msg, EcStart):
            return self._start(msg)
        if self._side is None:
            raise ProtocolError(f"frame {self.frame_id}: {type(msg).__name__} before EcStart")
        if msg.seq != self._seq:
            raise ProtocolError(
                f"frame {self.frame_id}: message seq {msg.seq}, expected {self._seq}"
            )
        if isinstance(msg, EcDone):
            self.done = True
            return None
        if not isinstance(msg, ParityQuery):
            raise ProtocolError(f"unexpected {type(msg).__name__} during reconciliation")
        return self._answer(msg)

    def _start(self, msg: EcStart) -> ParityReply:
        if self._side is not None:
            raise ProtocolError(f"frame {self.frame_id}: second EcStart")
        params = CascadeParams(msg.k1, msg.k2, msg.passes)
        params.check(msg.n, "EcStart")
        if msg.n != self.key.size:
            raise ProtocolError(f"EcStart: frame of {msg.n} bits, Alice holds {self.key.size}")
        side = _Side(self.key, msg.n, params, msg.seed, self._be)
        self._side = side
        self._prefix = np.zeros((2, msg.n + 1), np.uint8)
        np.bitwise_xor.accumulate(side.key, out=self._prefix[0, 1:])
        np.bitwise_xor.accumulate(side.ordered1, out=self._prefix[1, 1:])
        p0, p1, ph = side.top_parities()
        bits = np.concatenate([p0, p1[:-1], ph[2:]])
        self.leak_bits += bits.size
        self.rounds += 1
        self._seq = 1
        return ParityReply(self.frame_id, 0, bits)

    def _answer(self, q: ParityQuery) -> ParityReply:
        side = self._side
        assert side is not None
        layer, half = np.asarray(q.layer), np.asarray(q.half)
        lo, hi = np.asarray(q.lo), np.asarray(q.hi)
        m = layer.size
        if not (half.size == lo.size == hi.size == m) or m == 0:
            raise ProtocolError(f"ParityQuery {q.seq}: field lengths differ or no node")
        if m > side.n:
            raise ProtocolError(f"ParityQuery {q.seq}: {m} nodes for a frame of {side.n} bits")
        for name, a in (("layer", layer), ("half", half), ("lo", lo), ("hi", hi)):
            if a.dtype.kind not in "iu":
                raise ProtocolError(f"ParityQuery {q.seq}: {name} must be integers")
        i = side.be.check_nodes(layer, half, lo, hi, side.params.passes, side.n)
        if i >= 0:
            raise ProtocolError(
                f"ParityQuery {q.seq}: node {i} (layer {layer[i]}, half {half[i]}, "
                f"[{lo[i]}, {hi[i]})) is outside the frame's {side.params.passes} passes "
                f"and {side.n} bits"
            )
        wide = layer >= 2
        if wide.any() and int((hi[wide] - lo[wide]).sum()) > 2 * side.n:
            raise ProtocolError(
                f"ParityQuery {q.seq}: random-halves nodes span more than twice the frame "
                "(an honest Bob never asks that much in one round)"
            )
        if self.rounds >= CascadeBob.MAX_ROUNDS:
            raise ProtocolError(f"frame {self.frame_id}: more than {CascadeBob.MAX_ROUNDS} rounds")
        out = np.empty(m, np.uint8)
        side.be.node_parities(self._prefix, side.packed, side.seed, layer, half, lo, hi, out)
        self.leak_bits += m
        self.rounds += 1
        self._seq += 1
        return ParityReply(self.frame_id, q.seq, out)


class CascadeBob:
    """Bob's side: drives the passes and bisections, corrects his key in place."""

    MAX_ROUNDS = 20_000

    def __init__(
        self,
        key: np.ndarray,
        *,
        frame_id: int,
        seed: int,
        qber: float | None = None,
        params: CascadeParams | None = None,
        prefer: str = "leak",
        backend_name: str = "numba",
    ) -> None:
        self.key = _check_key(key, "CascadeBob")
        n = self.key.size
        if params is None:
            if qber is None:
                raise DistillInputError("CascadeBob needs an expected qber or explicit params")
            params = choose_params(qber, n, prefer)
        try:
            params.check(n, "CascadeBob")
        except ProtocolError as e:
            raise DistillInputError(str(e)) from None
        self.frame_id, self.params, self.n = int(frame_id), params, n
        self._seed = int(seed) & _U64
        self._be = backend(backend_name)
        self._side = _Side(self.key, n, params, self._seed, self._be)
        self.leak_bits = 0
        self.rounds = 0
        self.flips = 0
        self.done = False
        self._started = False
        self._seq = 0
        self._wave: tuple[object, ...] | None = None
        self._pending: int = 0
        self._mask_cache: dict[tuple[int, int, int, int], int] = {}
        self._inverse1: np.ndarray | None = None
        # blocks of pass 1 / 2 that may have turned odd since the last look
        self._cand0: list[np.ndarray] = [np.arange(-(-n // params.k1))]
        self._cand1: list[np.ndarray] = [np.arange(-(-n // params.k2))]

    # ------------------------------------------------------------ messages

    def start(self) -> EcStart:
        """The first message: the parameters (asks for every pass's block parities)."""
        if self._started:
            raise ProtocolError(f"frame {self.frame_id}: already started")
        self._started = True
        p = self.params
        return EcStart(self.frame_id, self.n, p.k1, p.k2, p.passes, self._seed)

    def handle(self, reply: ParityReply) -> ParityQuery | EcDone:
        """Alice's reply -> the next query, or EcDone when no odd block is left."""
        if self.done or not self._started:
            raise ProtocolError(f"frame {self.frame_id}: no reply expected now")
        if not isinstance(reply, ParityReply):
            raise ProtocolError(f"expected ParityReply, got {type(reply).__name__}")
        if reply.frame_id != self.frame_id or reply.seq != self._seq:
            raise ProtocolError(
                f"ParityReply for frame {reply.frame_id} seq {reply.seq}, expected frame "
                f"{self.frame_id} seq {self._seq}"
            )
        bits = np.asarray(reply.bits, np.int8)
        if bits.ndim != 1 or (bits.size and int(bits.max()) > 1) or (bits.size and bits.min() < 0):
            raise ProtocolError(f"ParityReply {reply.seq}: bits must be 0/1")
        self.rounds += 1
        if self.rounds > self.MAX_ROUNDS:
            raise ProtocolError(
                f"frame {self.frame_id}: no convergence in {self.MAX_ROUNDS} rounds"
            )
        if self._seq == 0:
            self._take_top(bits)
            replies = None
        else:
            if bits.size != self._pending:
                raise ProtocolError(
                    f"ParityReply {reply.seq}: {bits.size} parities for {self._pending} nodes"
                )
            replies = bits
        self.leak_bits += bits.size
        self._seq += 1
        return self._advance(replies)

    # ------------------------------------------------------------ internals

    def _take_top(self, bits: np.ndarray) -> None:
        s, p = self._side, self.params
        want = s.nb0 + s.nb1 - 1 + p.passes - 2
        if bits.size != want:
            raise ProtocolError(f"first ParityReply: {bits.size} parities, expected {want}")
        a0 = bits[: s.nb0].astype(np.int8)
        total = int(a0.sum()) & 1
        a1 = np.empty(s.nb1, np.int8)
        a1[:-1] = bits[s.nb0 : s.nb0 + s.nb1 - 1]
        a1[-1] = (total + int(a1[:-1].sum())) & 1
        ah = np.zeros((p.passes, 2), np.int8)
        ah[2:, 0] = bits[s.nb0 + s.nb1 - 1 :]
        ah[2:, 1] = ah[2:, 0] ^ total
        b0, b1, bh = s.top_parities()
        self._mism0 = (a0 ^ b0.astype(np.int8)).astype(np.int8)
        self._mism1 = (a1 ^ b1.astype(np.int8)).astype(np.int8)
        self._a0, self._a1, self._ah = a0, a1, ah
        self._mismh = self._halves_mismatch(bh)
        # parity caches of the aligned bisection trees of pass 1 and 2
        levels = max(p.k1, p.k2).bit_length() + 1
        off = np.zeros(levels + 1, np.int64)
        for lev in range(levels):
            off[lev + 1] = off[lev] + (self.n >> lev) + 1
        self._offsets = off
        self._cache = np.full((2, off[-1]), -1, np.int8)
        for lay, k, a in ((0, p.k1, a0), (1, p.k2, a1)):
            lo = np.arange(a.size, dtype=np.int64) * k
            hi = np.minimum(lo + k, self.n)
            levs = np.full(a.size, (k - 1).bit_length(), np.int64)
            levs[-1] = int(hi[-1] - lo[-1] - 1).bit_length()
            self._cache[lay][off[levs] + (lo >> levs)] = a

    def _halves_mismatch(self, bh: np.ndarray | None = None) -> np.ndarray:
        """Mismatch of both halves of each random-halves pass against Alice's parities."""
        s = self._side
        if bh is None:
            bh = s.half_parities()
        total = int(np.bitwise_xor.reduce(s.packed).bit_count()) & 1
        b = np.zeros((self.params.passes, 2), np.int8)
        b[2:, 0] = bh[2:]
        b[2:, 1] = bh[2:] ^ total
        out: np.ndarray = (self._ah ^ b).astype(np.int8)
        return out

    def _flip(self, positions: np.ndarray) -> None:
        if positions.size == 0:
            return
        self.flips += int(positions.size)
        if self.flips > self.n // 2:
            raise ProtocolError(f"frame {self.frame_id}: more flips than half the frame")
        s = self._side
        if self._inverse1 is None:
            self._inverse1 = np.empty(self.n, np.int64)
            self._inverse1[s.order1] = np.arange(self.n, dtype=np.int64)
        inv = self._inverse1
        self._cand0.append(positions // self.params.k1)
        self._cand1.append(inv[positions] // self.params.k2)
        self._be.flip(
            positions.astype(np.int64),
            s.key,
            s.ordered1,
            inv,
            s.packed,
            self._mism0,
            self.params.k1,
            self._mism1,
            self.params.k2,
        )

    def _new_wave(self) -> bool:
        """Start bisecting the odd blocks of the lowest pass that has any.

        Pass 2's odd blocks that share no position with an odd block of pass 1
        join the same wave: no error can be found twice, and rounds are saved.
        """
        p, n, s = self.params, self.n, self._side
        c0 = np.unique(np.concatenate(self._cand0))
        c1 = np.unique(np.concatenate(self._cand1))
        idx0 = c0[self._mism0[c0] != 0]
        idx1 = c1[self._mism1[c1] != 0]
        self._cand0, self._cand1 = [], []
        if idx0.size and idx1.size:
            pos = np.minimum(idx1[:, None] * p.k2 + np.arange(p.k2)[None, :], n - 1)
            clash = self._mism0[s.order1[pos] // p.k1].any(axis=1)
            self._cand1.append(idx1[clash])  # still odd: for a later wave
            idx1 = idx1[~clash]
        if idx0.size or idx1.size:
            lo0 = idx0.astype(np.int64) * p.k1
            lo1 = idx1.astype(np.int64) * p.k2
            layer = np.concatenate([np.zeros(idx0.size, np.int8), np.ones(idx1.size, np.int8)])
            lo = np.concatenate([lo0, lo1])
            hi = np.concatenate([np.minimum(lo0 + p.k1, n), np.minimum(lo1 + p.k2, n)])
            apar = np.concatenate([self._a0[idx0], self._a1[idx1]]).astype(np.int8)
            self._wave = (0, layer, lo, hi, apar)
            return True
        self._mismh = self._halves_mismatch()
        for lay in range(2, p.passes):
            halves = np.flatnonzero(self._mismh[lay])
            if halves.size:
                nodes = [[int(h), 0, n, int(self._ah[lay, h])] for h in halves]
                self._wave = (lay, nodes)
                return True
        return False

    def _advance(self, replies: np.ndarray | None) -> ParityQuery | EcDone:
        s = self._side
        while True:
            if self._wave is None:
                if not self._new_wave():
                    self.done = True
                    return EcDone(self.frame_id, self._seq)
                replies = None
            assert self._wave is not None
            lay = int(self._wave[0])  # type: ignore[call-overload]
            if lay < 2:
                _, layer, lo, hi, apar = self._wave
                assert isinstance(layer, np.ndarray) and isinstance(lo, np.ndarray)
                assert isinstance(hi, np.ndarray) and isinstance(apar, np.ndarray)
                m = lo.size
                rep = np.full(m, -1, np.int8) if replies is None else replies.astype(np.int8)
                status = np.zeros(m, np.int8)
                qmid = np.zeros(m, np.int64)
                self._be.descend(
                    layer,
                    lo,
                    hi,
                    apar,
                    rep,
                    s.key,
                    s.words0,
                    s.ordered1,
                    s.words1,
                    self._cache,
                    self._offsets,
                    status,
                    qmid,
                )
                found = np.empty(m, np.int64)
                kept, nfound = self._be.settle(layer, lo, hi, apar, qmid, status, s.order1, found)
                self._flip(found[:nfound])
                if kept == 0:
                    self._wave = None
                    continue
                self._wave = (0, layer[:kept], lo[:kept], hi[:kept], apar[:kept])
                return self._query(layer[:kept], np.zeros(kept), lo[:kept], qmid[:kept])
            query = self._advance_halves(lay, replies)
            if query is not None:
                return query
            self._wave = None

    def _advance_halves(self, lay: int, replies: np.ndarray | None) -> ParityQuery | None:
        """Bisect the odd random halves of pass ``lay + 1`` (rare: few errors are left)."""
        s, be = self._side, self._be
        assert self._wave is not None
        nodes = self._wave[1]
        assert isinstance(nodes, list)
        open_nodes, qlo, qmid, found = [], [], [], []
        for t, node in enumerate(nodes):
            h, lo, hi, ap = node
            pending = -1 if replies is None else int(replies[t])
            while True:
                cnt = be.masked_count(s.seed, lay, h, lo, hi)
                if cnt == 0:
                    raise ProtocolError(
                        f"frame {self.frame_id}: parities of pass {lay + 1} are inconsistent"
                    )
                if cnt == 1:
                    found.append(be.masked_kth(s.seed, lay, h, lo, hi, 0))
                    break
                mid = be.masked_kth(s.seed, lay, h, lo, hi, (cnt + 1) // 2)
                ck = (lay, h, lo, mid)
                if pending >= 0:
                    self._mask_cache[ck] = pending
                    apl, pending = pending, -1
                else:
                    apl = self._mask_cache.get(ck, -1)
                if apl < 0:
                    open_nodes.append([h, lo, hi, ap])
                    qlo.append(lo)
                    qmid.append(mid)
                    break
                bpl = be.masked_parity(s.packed, s.seed, lay, h, lo, mid)
                if bpl != apl:
                    hi, ap = mid, apl
                else:
                    ap ^= apl
                    self._mask_cache[(lay, h, mid, hi)] = ap
                    lo = mid
        self._flip(np.asarray(found, np.int64))
        if not open_nodes:
            return None
        self._wave = (lay, open_nodes)
        halves = [nd[0] for nd in open_nodes]
        return self._query(
            np.full(len(qlo), lay), np.asarray(halves), np.asarray(qlo), np.asarray(qmid)
        )

    def _query(
        self, layer: np.ndarray, half: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> ParityQuery:
        self._pending = int(lo.size)
        return ParityQuery(
            self.frame_id,
            self._seq,
            layer.astype(np.uint8),
            half.astype(np.uint8),
            lo.astype(np.int64),  # copies: the wave's arrays change next round
            hi.astype(np.int64),
        )

    @property
    def corrected(self) -> np.ndarray:
        """Bob's key as corrected so far (a copy)."""
        return self._side.key.copy()


def reconcile(
    alice_key: np.ndarray,
    bob_key: np.ndarray,
    qber: float,
    *,
    frame_id: int = 0,
    seed: int = 1,
    params: CascadeParams | None = None,
    prefer: str = "leak",
    backend_name: str = "numba",
) -> tuple[np.ndarray, CascadeAlice, CascadeBob]:
    """Run both sides in-process (messages passed directly): Bob's corrected key and both sides.

    For tests and benchmarks; the daemon drives the two objects over the channel.
    """
    alice = CascadeAlice(alice_key, frame_id=frame_id, backend_name=backend_name)
    bob = CascadeBob(
        bob_key,
        frame_id=frame_id,
        seed=seed,
        qber=qber,
        params=params,
        prefer=prefer,
        backend_name=backend_name,
    )

    msg: EcStart | ParityQuery | EcDone = bob.start()
    while True:
        reply = alice.handle(msg)
        if reply is None:
            break
        msg = bob.handle(reply)
    return bob.corrected, alice, bob
