"""Streaming coincidence counting: singles, the coincidence matrix, accidentals and CAR.

Definition (exact integer semantics). Let ``h = window_ps // 2`` and let the
shifted time of a tag on channel ``c`` be ``s = t - delays_ps[c]``. A tag on
channel ``i`` and a tag on channel ``j != i`` are a coincidence when
``|s_i - s_j| <= h``, which for integers is the same as ``2 * |s_i - s_j| <=
window_ps``. Every such pair counts once, in ``coincidences[i, j]`` and
``coincidences[j, i]``; tags on the same channel never pair.

Streaming. The counter counts a pair when the later of its two tags (in the
order the tags arrive) is processed. Its partner then lies at most ``L = h +
max(delays) - min(delays)`` picoseconds earlier in raw time, so the counter
keeps only the tags of the last ``L`` picoseconds before the end of the last
batch (the *tail*, tags of equal time and channel merged into one weighted
entry) and nothing else. Pairs of a new batch with the tail are counted by
position in per-channel order (two pointers per channel pair over the tail and
the new batch's first ``L`` picoseconds); pairs inside the new batch by the
fast kernel below. So
every pair is counted exactly once whatever way the stream is cut into
batches, and :meth:`CoincidenceCounter.result` is complete at any time.

Fast kernel (pairs inside one batch). Channels are grouped by delay (sorted
delays; a new group where the gap to the previous delay exceeds
``max(window_ps, 10 ns)``). Pairs inside a group are at most ``h + spread``
apart in raw time: a look-back from each tag, run only when the previous tag
is that close (about one comparison per tag). A pair across groups ``a < b``
always has its later tag in ``b``, at a raw distance in ``[lo, hi]`` with
``lo > 0`` (e.g. Bob's fibre delay): every tag is filed in a small ring of
time buckets under ``t + lo`` (and ``t + hi``), and each tag looks up the
bucket of its own time; a tag of ``b`` that finds an entry is a *hit*, and
only hits are scanned (in a second loop, from the latest filed index back).
The first loop has no data-dependent branch. Every candidate is checked with
the integer rule, so the result is exact for any delays up to +-1 ms; batches
are processed in chunks of ``CHUNK_TAGS`` tags that stay in cache.

No input can make counting quadratic: the fast kernels walk candidate pairs and
stop after a budget of steps proportional to the chunk; such a chunk (a burst of
equal or nearly equal timestamps: a stuck tagger, a crafted file) is counted by
position instead, O(tags x occupied channels) however many pairs it holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np

from ._errors import CoincidenceError, TagBatchError
from ._tags import MAX_CHANNELS, TagBatch

MAX_DELAY_PS = 10**9
"""Largest accepted ``|delay|``: 1 ms."""

CHUNK_TAGS = 2**20
"""Tags the fast kernels see at a time (batches are cut internally so they stay in cache)."""

_GROUP_GAP_PS = 10_000
"""Delays closer than ``max(window_ps, this)`` may share a group of the fast kernel."""

_BUDGET_STEPS_PER_TAG = 16
"""Pair-walk steps per tag the fast kernels may take before a chunk is counted by channel."""

_BUDGET_BASE_STEPS = 1024
"""Pair-walk steps every chunk may take regardless of its size."""

_u64 = np.uint64
"""Index cast in the kernels: with unsigned indices numba emits no negative-index fix-up."""


@dataclass(frozen=True)
class CoincidenceReport:
    """Everything counted so far by a :class:`CoincidenceCounter`.

    Attributes:
        n_channels: number of channels.
        window_ps: full coincidence window; pairs with ``2 * |dt| <= window_ps`` count.
        delays_ps: int64 (n,), subtracted from each channel's timestamps.
        duration_ps: measured time, the sum of the batches' ``end - begin``.
        singles: int64 (n,), tags per channel.
        coincidences: int64 (n, n), symmetric, diagonal 0.
        accidentals: float64 (n, n), expected accidental coincidences
            ``R_i * R_j * L * T`` (counts, with ``R = singles / T`` and ``L`` the number of
            integer lags in the window, :func:`window_lags`), diagonal 0.
        car: float64 (n, n), coincidence-to-accidental ratio
            ``coincidences / accidentals``; nan where accidentals are 0.
    """

    n_channels: int
    window_ps: int
    delays_ps: np.ndarray
    duration_ps: int
    singles: np.ndarray
    coincidences: np.ndarray
    accidentals: np.ndarray
    car: np.ndarray

    @property
    def duration_s(self) -> float:
        """Measured time in seconds."""
        return self.duration_ps * 1e-12

    @property
    def singles_rate_hz(self) -> np.ndarray:
        """Singles per second per channel (zeros if nothing was measured)."""
        if self.duration_ps <= 0:
            return np.zeros(self.n_channels)
        return self.singles / self.duration_s

    @property
    def coincidence_rate_hz(self) -> np.ndarray:
        """Coincidences per second, (n, n) (zeros if nothing was measured)."""
        if self.duration_ps <= 0:
            return np.zeros((self.n_channels, self.n_channels))
        return self.coincidences / self.duration_s


def window_lags(window_ps: int) -> int:
    """Integer lags ``dt`` the closed window ``2 |dt| <= window_ps`` spans: ``2 (w // 2) + 1``.

    An even window ``w`` spans ``w + 1`` lags (``-w/2 .. w/2``), an odd one ``w``.
    """
    return 2 * (int(window_ps) // 2) + 1


def accidentals_matrix(singles: np.ndarray, window_ps: int, duration_ps: int) -> np.ndarray:
    """Expected accidentals ``N_i N_j L / T`` (counts), diagonal 0.

    ``L = window_lags(window_ps)`` is the exact number of integer picosecond lags the
    closed window spans (``w + 1`` for an even ``w``): two uncorrelated streams of
    ``N_i`` and ``N_j`` tags spread uniformly over ``T`` ps meet at any given lag
    ``N_i N_j / T`` times. (``R_i R_j w T`` with ``w`` is 1/(w+1) low: 33 % at w = 2.)
    """
    n = np.asarray(singles, dtype=np.float64)
    if duration_ps <= 0:
        return np.zeros((n.size, n.size))
    acc = np.outer(n, n) * (float(window_lags(window_ps)) / float(duration_ps))
    np.fill_diagonal(acc, 0.0)
    return acc


# --------------------------------------------------------------------------- kernels


@numba.njit(cache=True, nogil=True)
def _count_same_group(
    ts: np.ndarray,
    ch: np.ndarray,
    delays: np.ndarray,
    grp: np.ndarray,
    half_ps: int,
    lookback_ps: int,
    budget: int,
    singles: np.ndarray,
    m: np.ndarray,
) -> bool:
    """Singles and the pairs of tags in the same delay group, inside one batch.

    A pair (p < q) adds to ``m[ch[p], ch[q]]``. Partners of ``q`` in its group lie at most
    ``lookback_ps`` earlier in raw time; the look-back runs only when the previous tag is
    that close (rare: about one comparison per tag). After ``budget`` look-back steps
    (a burst: many tags within ``lookback_ps``) the pair walk stops and False is
    returned: ``m`` is then incomplete, the singles are always complete.
    """
    n = ts.shape[0]
    if n == 0:
        return True
    steps = 0
    prev = ts[0] - lookback_ps - 1
    for q in range(n):
        uq = _u64(q)  # unsigned indices: numba then skips its negative-index fix-up
        tq = ts[uq]
        cq = ch[uq]
        singles[cq] += 1
        if tq - prev <= lookback_ps and steps <= budget:
            g = grp[cq]
            sq = tq - delays[cq]
            p = q - 1
            while p >= 0 and tq - ts[_u64(p)] <= lookback_ps:
                cp = ch[_u64(p)]
                dd = sq - (ts[_u64(p)] - delays[cp])
                if grp[cp] == g and cp != cq and -half_ps <= dd <= half_ps:
                    m[cp, cq] += 1
                p -= 1
            steps += q - p
        prev = tq
    return steps <= budget


@numba.njit(cache=True, nogil=True)
def _count_cross_groups(
    ts: np.ndarray,
    ch: np.ndarray,
    delays: np.ndarray,
    grp: np.ndarray,
    half_ps: int,
    ga: int,
    gb: int,
    lo_ps: int,
    hi_ps: int,
    shift: int,
    ring: np.ndarray,
    hit_q: np.ndarray,
    hit_p: np.ndarray,
    budget: int,
    m: np.ndarray,
) -> bool:
    """Pairs of a tag of group ``ga`` and a later one of group ``gb``, inside one batch.

    Such pairs have ``t_q - t_p`` in ``[lo_ps, hi_ps]``, ``lo_ps > 0``. Pass 1 files
    every tag ``p`` in a ring of time buckets (``2**shift`` ps wide, at least
    ``hi_ps - lo_ps``) under the buckets of ``t_p + lo_ps`` and ``t_p + hi_ps``; each
    slot keeps the latest index filed in it, tagged with the bucket's high bits. A tag
    ``q`` of group ``gb`` whose bucket (of ``t_q``) holds an entry is a *hit*: every
    partner is at or before that entry's index. Pass 1 has no data-dependent branch;
    pass 2 scans back from each hit's entry and checks every candidate exactly.
    ``ring.size`` is a power of two with ``ring.size << shift > hi_ps``; ``hit_q`` and
    ``hit_p`` hold ``ts.size`` entries; ``ts.size < 2**32`` (indices share a word).
    Returns False (``m`` incomplete) once pass 2 has taken more than ``budget`` steps.
    """
    n = ts.shape[0]
    if n == 0:
        return True
    mask = _u64(ring.shape[0] - 1)
    ring_bits = 0
    while (1 << ring_bits) <= mask:
        ring_bits += 1
    ring[:] = 0  # a stale entry only causes an extra (exactly checked) scan
    low = np.int64(0xFFFFFFFF)
    t00 = ts[0]
    span = hi_ps - lo_ps
    nh = _u64(0)
    for q in range(n):
        uq = _u64(q)
        rel = ts[uq] - t00
        b = rel >> shift
        e = ring[_u64(b) & mask]
        best = (e & low) if ((e >> 32) & low) == ((b >> ring_bits) & low) else -1
        hit_q[nh] = q
        hit_p[nh] = best
        nh += _u64((best >= 0) & (grp[ch[uq]] == gb))
        b1 = (rel + lo_ps) >> shift
        b2 = (rel + lo_ps + span) >> shift
        ring[_u64(b1) & mask] = (((b1 >> ring_bits) & low) << 32) | q
        ring[_u64(b2) & mask] = (((b2 >> ring_bits) & low) << 32) | q
    steps = 0
    for k in range(nh):
        q = hit_q[k]
        p = hit_p[k]
        p0 = p
        tq = ts[q]
        cq = ch[q]
        sq = tq - delays[cq]
        lo_t = tq - hi_ps
        while p >= 0 and ts[_u64(p)] >= lo_t:
            cp = ch[_u64(p)]
            dd = sq - (ts[_u64(p)] - delays[cp])
            if grp[cp] == ga and -half_ps <= dd <= half_ps:
                m[cp, cq] += 1
            p -= 1
        steps += p0 - p + 1
        if steps > budget:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _group_by_channel(
    ts: np.ndarray, ch: np.ndarray, delays: np.ndarray, n_ch: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counting sort by channel: (shifted times grouped by channel, source index, offsets).

    Channel ``c``'s shifted times ``t - delays[c]`` are ``s[off[c]:off[c + 1]]``, in
    arrival order, hence sorted (one channel, one delay). ``idx`` maps back to ``ts``.
    """
    n = ts.shape[0]
    off = np.zeros(n_ch + 1, np.int64)
    for i in range(n):
        off[ch[i] + 1] += 1
    for c in range(n_ch):
        off[c + 1] += off[c]
    pos = off[:n_ch].copy()
    s = np.empty(n, np.int64)
    idx = np.empty(n, np.int64)
    for i in range(n):
        c = ch[i]
        s[pos[c]] = ts[i] - delays[c]
        idx[pos[c]] = i
        pos[c] += 1
    return s, idx, off


@numba.njit(cache=True, nogil=True)
def _count_by_channel(
    ts: np.ndarray, ch: np.ndarray, delays: np.ndarray, half_ps: int, m: np.ndarray
) -> None:
    """All pairs among one run of tags, by position in per-channel order (no pair walk).

    For each channel pair ``a < b`` and each tag of ``a`` at shifted time ``s``, two
    pointers give the first tag of ``b`` at or after ``s - half_ps`` and the first after
    ``s + half_ps``; their difference is the number of its partners. Time and memory are
    O(tags x occupied channels) however many pairs there are (a stuck tagger's burst of
    equal timestamps costs as much as any other run of tags).
    """
    n_ch = m.shape[0]
    s, _, off = _group_by_channel(ts, ch, delays, n_ch)
    for a in range(n_ch):
        a0, a1 = off[a], off[a + 1]
        if a0 == a1:
            continue
        for b in range(a + 1, n_ch):
            b0, b1 = off[b], off[b + 1]
            if b0 == b1:
                continue
            lo = b0
            hi = b0
            total = 0
            for p in range(a0, a1):
                x = s[p]
                while lo < b1 and s[lo] < x - half_ps:
                    lo += 1
                while hi < b1 and s[hi] <= x + half_ps:
                    hi += 1
                total += hi - lo
            m[a, b] += total


@numba.njit(cache=True, nogil=True)
def _count_tail_pairs(
    old_t: np.ndarray,
    old_c: np.ndarray,
    old_w: np.ndarray,
    new_t: np.ndarray,
    new_c: np.ndarray,
    delays: np.ndarray,
    half_ps: int,
    m: np.ndarray,
) -> None:
    """Pairs of one (weighted) tail tag and one new tag, on different channels.

    ``old_w`` is each tail entry's multiplicity (equal tags are merged in the tail). Per
    channel pair, two pointers over the grouped shifted times and prefix sums of the
    weights: O(tags x occupied channels), whatever the number of pairs.
    """
    n_ch = m.shape[0]
    so, io, oo = _group_by_channel(old_t, old_c, delays, n_ch)
    sn, _, on = _group_by_channel(new_t, new_c, delays, n_ch)
    cw = np.zeros(so.shape[0] + 1, np.int64)
    for k in range(so.shape[0]):
        cw[k + 1] = cw[k] + old_w[io[k]]
    for a in range(n_ch):
        a0, a1 = oo[a], oo[a + 1]
        if a0 == a1:
            continue
        for b in range(n_ch):
            b0, b1 = on[b], on[b + 1]
            if b == a or b0 == b1:
                continue
            lo = a0
            hi = a0
            total = 0
            for q in range(b0, b1):
                x = sn[q]
                while lo < a1 and so[lo] < x - half_ps:
                    lo += 1
                while hi < a1 and so[hi] <= x + half_ps:
                    hi += 1
                total += cw[hi] - cw[lo]
            m[a, b] += total


@numba.njit(cache=True, nogil=True)
def _merge_equal_tags(
    t: np.ndarray, c: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge tags of equal time and channel into one entry with the summed weight.

    ``t`` sorted; entries of one time keep the order of their channels' first
    appearance. Bounds the tail by distinct (time, channel) values, not by tags.
    """
    n = t.shape[0]
    t2 = np.empty(n, np.int64)
    c2 = np.empty(n, np.uint8)
    w2 = np.empty(n, np.int64)
    acc = np.zeros(256, np.int64)
    k = 0
    i = 0
    while i < n:
        j = i + 1
        while j < n and t[j] == t[i]:
            j += 1
        if j == i + 1:
            t2[k] = t[i]
            c2[k] = c[i]
            w2[k] = w[i]
            k += 1
        else:
            for r in range(i, j):
                acc[c[r]] += w[r]
            for r in range(i, j):
                cr = c[r]
                if acc[cr] > 0:
                    t2[k] = t[i]
                    c2[k] = cr
                    w2[k] = acc[cr]
                    acc[cr] = 0
                    k += 1
        i = j
    return t2[:k].copy(), c2[:k].copy(), w2[:k].copy()


# --------------------------------------------------------------------------- the counter


def _validate_window(window_ps: object, where: str) -> int:
    if isinstance(window_ps, bool) or not isinstance(window_ps, int | np.integer):
        raise CoincidenceError(f"{where}: window_ps must be an integer (ps), got {window_ps!r}")
    if int(window_ps) <= 0:
        raise CoincidenceError(f"{where}: window_ps must be > 0, got {int(window_ps)}")
    return int(window_ps)


def _validate_delays(
    delays_ps: Sequence[int] | np.ndarray | None, n_channels: int, where: str
) -> np.ndarray:
    if delays_ps is None:
        return np.zeros(n_channels, np.int64)
    d = np.asarray(delays_ps)
    if d.ndim != 1 or d.shape[0] != n_channels:
        raise CoincidenceError(
            f"{where}: delays_ps must have one entry per channel ({n_channels}), "
            f"got shape {d.shape}"
        )
    if d.size and d.dtype.kind == "f":
        if not np.all(np.isfinite(d)) or np.any(d != np.round(d)):
            raise CoincidenceError(f"{where}: delays_ps must be whole picoseconds, got {d}")
    elif d.size and d.dtype.kind not in "iu":
        raise CoincidenceError(f"{where}: delays_ps must be integers (ps), got dtype {d.dtype}")
    if d.size and np.any(np.abs(d.astype(np.float64)) > MAX_DELAY_PS):
        bad = int(np.argmax(np.abs(d.astype(np.float64)) > MAX_DELAY_PS))
        raise CoincidenceError(
            f"{where}: delays_ps[{bad}] = {d[bad]} ps exceeds the limit of "
            f"+-{MAX_DELAY_PS} ps (1 ms)"
        )
    return d.astype(np.int64)


def _delay_groups(delays: np.ndarray, window_ps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group channels of close delays: (group of each channel, min and max delay per group).

    Groups are numbered in increasing delay; neighbouring groups are more than
    ``max(window_ps, 10 ns)`` apart.
    """
    order = np.argsort(delays, kind="stable")
    gap = max(window_ps, _GROUP_GAP_PS)
    grp = np.zeros(delays.size, np.int64)
    lo = [int(delays[order[0]])]
    hi = [int(delays[order[0]])]
    for ch in order[1:]:
        d = int(delays[ch])
        if d - hi[-1] > gap:
            lo.append(d)
            hi.append(d)
        hi[-1] = d
        grp[ch] = len(lo) - 1
    return grp, np.array(lo, np.int64), np.array(hi, np.int64)


class CoincidenceCounter:
    """Count singles and pairwise coincidences over a stream of :class:`TagBatch` es.

    Args:
        n_channels: number of channels (1..256); tags on higher channels are refused.
        window_ps: full coincidence window; a pair counts when ``2 * |dt| <= window_ps``,
            ``dt`` being the difference of the delay-corrected times.
        delays_ps: per-channel delay subtracted from the channel's timestamps
            (integers, ``|delay| <= 1 ms``); default all zero.

    Batches must come in time order (each begins at or after the previous end);
    gaps are allowed and are not counted as measured time. The result does not
    depend on how the stream is cut into batches. Memory: the tags of the last
    ``horizon_ps = window_ps // 2 + max(delays) - min(delays)`` picoseconds (the
    tail, :attr:`held_back_tags`; equal time and channel share one entry,
    :attr:`held_back_entries`), a bucket ring of at most 2**17 slots and int64 work
    arrays of one chunk (``chunk_tags``); no copy of a batch is kept.
    """

    def __init__(
        self,
        n_channels: int,
        window_ps: int,
        delays_ps: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        where = "CoincidenceCounter"
        if isinstance(n_channels, bool) or not isinstance(n_channels, int | np.integer):
            raise CoincidenceError(f"{where}: n_channels must be an integer, got {n_channels!r}")
        if not 1 <= int(n_channels) <= MAX_CHANNELS:
            raise CoincidenceError(
                f"{where}: n_channels must be in 1..{MAX_CHANNELS}, got {int(n_channels)}"
            )
        self.n_channels = int(n_channels)
        self.window_ps = _validate_window(window_ps, where)
        self.delays_ps = _validate_delays(delays_ps, self.n_channels, where)
        self._half_ps = self.window_ps // 2
        self.horizon_ps = self._half_ps + int(self.delays_ps.max() - self.delays_ps.min())
        """Largest raw-time distance between the two tags of a pair: the tail's length."""
        grp, lo_d, hi_d = _delay_groups(self.delays_ps, self.window_ps)
        self._grp = grp
        h = self._half_ps
        self._lookback_ps = h + int((hi_d - lo_d).max())
        # cross-group pairs (a < b): the later tag is in b, t_q - t_p in [xlo, xhi], xlo > 0
        pairs = [(a, b) for a in range(lo_d.size) for b in range(a + 1, lo_d.size)]
        self._xa = np.array([a for a, _ in pairs], np.int64)
        self._xb = np.array([b for _, b in pairs], np.int64)
        self._xlo = np.array([lo_d[b] - hi_d[a] - h for a, b in pairs], np.int64)
        self._xhi = np.array([hi_d[b] - lo_d[a] + h for a, b in pairs], np.int64)
        span = int((self._xhi - self._xlo).max()) if pairs else 1
        reach = int(self._xhi.max()) if pairs else 1
        # buckets at least as wide as a cross window; at most 2**16 ring slots per pair
        self._shift = max(int(span).bit_length(), max(reach >> 16, 1).bit_length())
        ring = 1 << max((reach >> self._shift) + 4, 4).bit_length()
        self._ring = np.zeros(ring, np.int64)
        self._chunk_tags = CHUNK_TAGS
        self._hit_q = np.empty(0, np.int64)
        self._hit_p = np.empty(0, np.int64)
        self._scratch = np.zeros((self.n_channels, self.n_channels), np.int64)
        self.reset()

    @property
    def chunk_tags(self) -> int:
        """Tags the kernels see at a time (1 .. 2**31); results do not depend on it."""
        return self._chunk_tags

    @chunk_tags.setter
    def chunk_tags(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**31:
            raise CoincidenceError(
                f"CoincidenceCounter: chunk_tags must be in 1..2**31, got {value!r}"
            )
        self._chunk_tags = value

    @property
    def held_back_tags(self) -> int:
        """Tags kept from earlier batches (the tail), at most ``horizon_ps`` worth."""
        return int(self._tail_w.sum())

    @property
    def held_back_entries(self) -> int:
        """Entries the tail occupies: tags of equal time and channel share one."""
        return int(self._tail_t.shape[0])

    def reset(self) -> None:
        """Forget everything counted and held so far (configuration is kept)."""
        n = self.n_channels
        self._pairs = np.zeros((n, n), np.int64)
        self._singles = np.zeros(n, np.int64)
        self._duration_ps = 0
        self._last_end: int | None = None
        self._tail_t = np.empty(0, np.int64)
        self._tail_c = np.empty(0, np.uint8)
        self._tail_w = np.empty(0, np.int64)

    def _count_inside(self, ts: np.ndarray, ch: np.ndarray) -> None:
        """Singles and all pairs among the tags of one chunk.

        The fast kernels walk candidate pairs, which is cheap for real streams; each
        stops after a budget of steps proportional to the chunk (a burst of many tags
        within a window: equal timestamps of a stuck tagger, a crafted file). The chunk
        is then counted by position in per-channel order instead, so a chunk never costs
        more than O(tags x channels) whatever the number of pairs.
        """
        d, grp, h = self.delays_ps, self._grp, self._half_ps
        n = ts.shape[0]
        budget = _BUDGET_STEPS_PER_TAG * n + _BUDGET_BASE_STEPS
        scratch = self._scratch
        scratch[:] = 0
        ok = _count_same_group(ts, ch, d, grp, h, self._lookback_ps, budget, self._singles, scratch)
        if ok and self._xa.shape[0] and self._hit_q.shape[0] < n:
            size = max(n, int(1.25 * self._hit_q.shape[0]))
            self._hit_q = np.empty(size, np.int64)
            self._hit_p = np.empty(size, np.int64)
        for k in range(self._xa.shape[0]):
            if not ok:
                break
            ok = _count_cross_groups(
                ts, ch, d, grp, h, int(self._xa[k]), int(self._xb[k]), int(self._xlo[k]),
                int(self._xhi[k]), self._shift, self._ring, self._hit_q, self._hit_p,
                budget, scratch,
            )  # fmt: skip
        if ok:
            self._pairs += scratch
        else:
            _count_by_channel(ts, ch, d, h, self._pairs)

    def _count_with_tail(self, ts: np.ndarray, ch: np.ndarray) -> None:
        """Pairs of one tag of the tail and one of the new batch."""
        if self._tail_t.shape[0] == 0 or ts.shape[0] == 0:
            return
        k = int(np.searchsorted(ts, int(self._tail_t[-1]) + self.horizon_ps, side="right"))
        if k == 0:
            return
        _count_tail_pairs(
            self._tail_t, self._tail_c, self._tail_w, ts[:k], ch[:k], self.delays_ps,
            self._half_ps, self._pairs,
        )  # fmt: skip

    def process(self, batch: TagBatch) -> None:
        """Count the tags of ``batch``, which must begin at or after the previous batch's end."""
        if not isinstance(batch, TagBatch):
            raise TagBatchError(
                f"CoincidenceCounter.process: expected a TagBatch, got {type(batch).__name__}"
            )
        batch.check_channels(self.n_channels, "CoincidenceCounter")
        if self._last_end is not None and batch.begin_ps < self._last_end:
            raise TagBatchError(
                f"CoincidenceCounter: batch begins at {batch.begin_ps} ps, before the previous "
                f"batch's end {self._last_end} ps: batches must not overlap in time"
            )
        ts, ch = batch.timestamps, batch.channels
        # work in chunks that stay in cache; the tail carries pairs across chunk borders,
        # with the next chunk's first tag as the watermark (no later tag is earlier)
        n = ts.shape[0]
        start = 0
        while True:
            stop = min(start + self._chunk_tags, n)
            end = int(ts[stop]) if stop < n else batch.end_ps
            self._process_arrays(ts[start:stop], ch[start:stop], end)
            if stop >= n:
                break
            start = stop
        self._duration_ps += batch.duration_ps
        self._last_end = batch.end_ps

    def _process_arrays(self, ts: np.ndarray, ch: np.ndarray, end_ps: int) -> None:
        """Count a run of tags; every later tag will be at or after ``end_ps``."""
        self._count_with_tail(ts, ch)
        if ts.shape[0]:
            self._count_inside(ts, ch)
        # keep the tags a later tag may still pair with: raw time >= end - horizon
        cut = end_ps - self.horizon_ps
        k = int(np.searchsorted(ts, cut, side="left"))
        if k > 0:  # the old tail lies before ts[k - 1] < cut: all of it is done
            t, c, w = ts[k:], ch[k:], np.ones(ts.shape[0] - k, np.int64)
        else:
            j = int(np.searchsorted(self._tail_t, cut, side="left"))
            t = np.concatenate([self._tail_t[j:], ts])
            c = np.concatenate([self._tail_c[j:], ch])
            w = np.concatenate([self._tail_w[j:], np.ones(ts.shape[0], np.int64)])
        # equal (time, channel) tags share one entry: a burst of equal timestamps
        # cannot grow the tail (memory stays bounded by distinct times in the horizon)
        self._tail_t, self._tail_c, self._tail_w = _merge_equal_tags(t, c, w)

    def result(self) -> CoincidenceReport:
        """The report of everything processed so far (does not change the counter's state)."""
        m = self._pairs + self._pairs.T
        np.fill_diagonal(m, 0)
        acc = accidentals_matrix(self._singles, self.window_ps, self._duration_ps)
        with np.errstate(divide="ignore", invalid="ignore"):
            car = np.where(acc > 0, m / np.where(acc > 0, acc, 1.0), np.nan)
        return CoincidenceReport(
            n_channels=self.n_channels,
            window_ps=self.window_ps,
            delays_ps=self.delays_ps.copy(),
            duration_ps=int(self._duration_ps),
            singles=self._singles.copy(),
            coincidences=m,
            accidentals=acc,
            car=car,
        )


# --------------------------------------------------------------------------- parallel


DEFAULT_SEGMENT_TAGS = 1 << 22
"""Tags per time range counted by one worker of :func:`count_parallel`."""


@dataclass(frozen=True)
class _Segment:
    """One time range counted alone, with the tags a neighbouring range may pair with."""

    pairs: np.ndarray
    singles: np.ndarray
    duration_ps: int
    end_ps: int
    head: TagBatch  # tags before begin + horizon
    tail: TagBatch  # tags at or after end - horizon


def _edge_batch(batches: Iterable[TagBatch], lo_ps: int, hi_ps: int) -> TagBatch:
    """The tags of ``batches`` with ``lo_ps <= t < hi_ps``, as one batch."""
    ts: list[np.ndarray] = []
    ch: list[np.ndarray] = []
    for b in batches:
        if b.end_ps <= lo_ps or b.begin_ps >= hi_ps or len(b) == 0:
            continue
        i = int(np.searchsorted(b.timestamps, lo_ps, side="left"))
        j = int(np.searchsorted(b.timestamps, hi_ps, side="left"))
        ts.append(b.timestamps[i:j])
        ch.append(b.channels[i:j])
    t = np.concatenate(ts) if ts else np.empty(0, np.int64)
    if t.size == 0:
        return TagBatch.empty(lo_ps, lo_ps)
    return TagBatch(t, np.concatenate(ch), int(t[0]), int(t[-1]) + 1)


def _count_source(
    batches: Iterable[TagBatch], n_channels: int, window_ps: int, delays_ps: np.ndarray
) -> _Segment | None:
    """Count one time range with its own counter, keeping its first and last horizon."""
    counter = CoincidenceCounter(n_channels, window_ps, delays_ps)
    hz = counter.horizon_ps
    head: list[TagBatch] = []
    tail: list[TagBatch] = []
    begin: int | None = None
    end = 0
    for b in batches:
        counter.process(b)
        if begin is None:
            begin = b.begin_ps
        if b.begin_ps <= begin + hz:
            head.append(b)
        end = b.end_ps
        tail.append(b)
        while len(tail) > 1 and tail[0].end_ps < end - hz - 1:
            tail.pop(0)
    if begin is None:
        return None
    rep = counter.result()
    return _Segment(
        np.triu(rep.coincidences),
        rep.singles,
        rep.duration_ps,
        end,
        _edge_batch(head, begin, begin + hz + 1),
        _edge_batch(tail, end - hz - 1, end),
    )


def _pairs_of(parts: Sequence[TagBatch], n: int, w: int, d: np.ndarray) -> np.ndarray:
    """Upper-triangle pair counts among the tags of ``parts`` (in time order)."""
    counter = CoincidenceCounter(n, w, d)
    t = np.concatenate([p.timestamps for p in parts])
    c = np.concatenate([p.channels for p in parts])
    if t.size:
        counter.process(TagBatch(t, c, int(t[0]), int(t[-1]) + 1))
    return np.triu(counter.result().coincidences)


def _stitch(
    segments: Sequence[_Segment], n: int, window_ps: int, d: np.ndarray, horizon_ps: int
) -> CoincidenceReport:
    """Sum ranges counted alone and add the pairs across their boundaries, exactly.

    ``carry`` holds every tag of the ranges so far within ``horizon_ps`` of their end
    (several ranges' worth if they are short); a pair across a boundary has its
    earlier tag there and its later one in the next range's head, and is counted as
    ``C(carry + head) - C(carry) - C(head)``.
    """
    pairs = np.zeros((n, n), np.int64)
    singles = np.zeros(n, np.int64)
    duration = 0
    carry = TagBatch.empty(0, 0)
    for seg in segments:
        pairs += seg.pairs
        singles += seg.singles
        duration += seg.duration_ps
        if len(carry) and len(seg.head):
            pairs += (
                _pairs_of([carry, seg.head], n, window_ps, d)
                - _pairs_of([carry], n, window_ps, d)
                - _pairs_of([seg.head], n, window_ps, d)
            )
        carry = _edge_batch([carry, seg.tail], seg.end_ps - horizon_ps - 1, seg.end_ps)
    m = pairs + pairs.T
    np.fill_diagonal(m, 0)
    acc = accidentals_matrix(singles, window_ps, duration)
    with np.errstate(divide="ignore", invalid="ignore"):
        car = np.where(acc > 0, m / np.where(acc > 0, acc, 1.0), np.nan)
    return CoincidenceReport(
        n_channels=n,
        window_ps=window_ps,
        delays_ps=d.copy(),
        duration_ps=int(duration),
        singles=singles,
        coincidences=m,
        accidentals=acc,
        car=car,
    )


def _segments(batches: Iterable[TagBatch], min_tags: int) -> Iterator[list[TagBatch]]:
    """Group consecutive batches into ranges of at least ``min_tags`` tags."""
    group: list[TagBatch] = []
    n = 0
    for b in batches:
        group.append(b)
        n += len(b)
        if n >= min_tags:
            yield group
            group, n = [], 0
    if group:
        yield group


def _default_workers(workers: int | None, where: str) -> int:
    if workers is None:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise CoincidenceError(f"{where}: workers must be an integer >= 1, got {workers!r}")
    return workers


def count_parallel(
    batches: Iterable[TagBatch],
    n_channels: int,
    window_ps: int,
    delays_ps: Sequence[int] | np.ndarray | None = None,
    *,
    workers: int | None = None,
    segment_tags: int = DEFAULT_SEGMENT_TAGS,
) -> CoincidenceReport:
    """Count a stream of batches with ``workers`` threads: the report of one counter.

    The stream is cut into time ranges of about ``segment_tags`` tags, counted by
    independent counters in a thread pool (the kernels release the GIL) while this
    thread keeps reading; the ranges are stitched exactly (see :func:`_stitch`).
    Memory: at most ``workers + 1`` ranges in flight. ``workers`` defaults to the
    CPUs this process may use; 1 counts in this thread with one counter.
    """
    proto = CoincidenceCounter(n_channels, window_ps, delays_ps)  # validates the arguments
    d = proto.delays_ps
    workers = _default_workers(workers, "count_parallel")
    if isinstance(segment_tags, bool) or not isinstance(segment_tags, int) or segment_tags < 1:
        raise CoincidenceError(f"count_parallel: segment_tags must be >= 1, got {segment_tags!r}")
    if workers == 1:
        for b in batches:
            proto.process(b)
        return proto.result()
    results: list[_Segment | None] = []
    pending: list[Future[_Segment | None]] = []
    last_end: int | None = None
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qnet-count") as pool:
        for group in _segments(batches, segment_tags):
            for b in group:
                if not isinstance(b, TagBatch):
                    raise TagBatchError(
                        f"count_parallel: expected TagBatch items, got {type(b).__name__}"
                    )
                b.check_channels(n_channels, "count_parallel")
            if last_end is not None and group[0].begin_ps < last_end:
                raise TagBatchError(
                    f"count_parallel: batch begins at {group[0].begin_ps} ps, before the "
                    f"previous batch's end {last_end} ps: batches must not overlap in time"
                )
            last_end = group[-1].end_ps
            pending.append(pool.submit(_count_source, group, n_channels, window_ps, d))
            while len(pending) > workers:
                results.append(pending.pop(0).result())
        results += [f.result() for f in pending]
    segs = [r for r in results if r is not None]
    return _stitch(segs, n_channels, proto.window_ps, d, proto.horizon_ps)


def count_ranges_parallel(
    sources: Sequence[Callable[[], Iterable[TagBatch]]],
    n_channels: int,
    window_ps: int,
    delays_ps: Sequence[int] | np.ndarray | None = None,
    *,
    workers: int | None = None,
) -> CoincidenceReport:
    """Count consecutive time ranges, each read *and* counted by a worker thread.

    ``sources[k]()`` yields the batches of range ``k`` (e.g. one part of a file from
    ``split_npz``); range ``k + 1`` must begin at or after range ``k`` ends. Reading
    runs in the workers too, so a file is read on every core. The result is the one
    counter's over all ranges in order (exact stitching, any range lengths).
    """
    proto = CoincidenceCounter(n_channels, window_ps, delays_ps)
    d = proto.delays_ps
    workers = _default_workers(workers, "count_ranges_parallel")
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qnet-range") as pool:
        futures = [
            pool.submit(lambda src=src: _count_source(src(), n_channels, window_ps, d))
            for src in sources
        ]
        results = [f.result() for f in futures]
    segs = [r for r in results if r is not None]
    for k in range(1, len(segs)):
        if segs[k].head.begin_ps < segs[k - 1].end_ps and len(segs[k].head):
            raise TagBatchError(
                f"count_ranges_parallel: range {k} has a tag at {segs[k].head.begin_ps} ps, "
                f"before the previous range's end {segs[k - 1].end_ps} ps"
            )
    return _stitch(segs, n_channels, proto.window_ps, d, proto.horizon_ps)
