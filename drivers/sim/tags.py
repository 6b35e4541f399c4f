"""The testbed's tag generator: detected photon pairs -> sorted time tags (Numba).

One call of :meth:`TagGenerator.step` produces the tags of one emission window
of simulated time. Inside the kernel, per step:

1. the detected events form a Poisson process (the pair process already thinned
   by transmission and efficiency, see ``physics.event_classes``); each event's
   class (alias method) says which detectors fire: a coincidence or one photon;
2. every photon gets its channel's delay (fiber + cable) and Gaussian jitter
   (4096 equal-probability values per channel, so tails beyond 3.5 sigma are cut);
   Alice's photons go to one stream and Bob's to another; within a side the
   delays differ only by cable lengths, so an insertion sort finishes each
   stream in linear time;
3. per side, photons, dark counts and pending afterpulses are merged in time
   order through each channel's dead-time filter (non-paralyzable); an accepted
   click may schedule one afterpulse after the dead time;
4. the two sides are merged into one sorted stream.

Photons that land beyond the step's emission end wait in a carry buffer for
the next step, so long fibers and jitter never put a tag in the wrong batch.
Everything is seeded per step: the same seeds and tables give the same tags.
"""

from __future__ import annotations

import numba
import numpy as np

NO_TIME = np.int64(-(2**62))
N_GEN_CHANNELS = 8
_U64 = numba.uint64
_INV_2_53 = 1.0 / 9007199254740992.0
_NORMAL_BITS = 12


def _normal_quantiles() -> np.ndarray:
    """Standard-normal quantiles at the midpoints of 2**12 equal-probability bins (+1 guard)."""
    from statistics import NormalDist

    n = 1 << _NORMAL_BITS
    q = np.array([NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)])
    return np.append(q, q[-1])


_NORMAL_TABLE = _normal_quantiles()


@numba.njit(cache=True, nogil=True, inline="always")
def _rotl(x: np.uint64, k: int) -> np.uint64:
    return (x << _U64(k)) | (x >> _U64(64 - k))


@numba.njit(cache=True, nogil=True, inline="always")
def _next_u64(s: np.ndarray) -> np.uint64:
    """xoshiro256** step on the 4-word state ``s`` (fast, and seeded per step)."""
    s0, s1, s2, s3 = s[0], s[1], s[2], s[3]
    result = _rotl(s1 * _U64(5), 7) * _U64(9)
    t = s1 << _U64(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = _rotl(s3, 45)
    s[0], s[1], s[2], s[3] = s0, s1, s2, s3
    return result


@numba.njit(cache=True, nogil=True, inline="always")
def _uniform(s: np.ndarray) -> float:
    """Uniform float in [0, 1)."""
    return float(_next_u64(s) >> _U64(11)) * _INV_2_53


@numba.njit(cache=True, nogil=True, inline="always")
def _exponential(s: np.ndarray) -> float:
    """Exponential variate with mean 1."""
    return -np.log(1.0 - _uniform(s))


@numba.njit(cache=True, nogil=True)
def _seed_state(seed: int) -> np.ndarray:
    """xoshiro256** state from a seed via splitmix64."""
    s = np.empty(4, np.uint64)
    x = _U64(seed)
    for i in range(4):
        x += _U64(0x9E3779B97F4A7C15)
        z = x
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        s[i] = z ^ (z >> _U64(31))
    return s


@numba.njit(cache=True, nogil=True)
def _insertion_sort(t: np.ndarray, c: np.ndarray, n: int) -> None:
    """Sort ``t[:n]`` (moving ``c`` along); linear time when only locally out of order."""
    for i in range(1, n):
        x = t[i]
        if t[i - 1] <= x:
            continue
        y = c[i]
        j = i - 1
        while j >= 0 and t[j] > x:
            t[j + 1] = t[j]
            c[j + 1] = c[j]
            j -= 1
        t[j + 1] = x
        c[j + 1] = y


@numba.njit(cache=True, nogil=True)
def _step_kernel(
    seed: int,
    p0: int,
    p1: int,
    e0: int,
    e1: int,
    rate_hz: float,
    alias_prob: np.ndarray,
    alias_idx: np.ndarray,
    ch_a: np.ndarray,
    ch_b: np.ndarray,
    delays: np.ndarray,
    jitter_table: np.ndarray,
    dark_hz: np.ndarray,
    dead_ps: np.ndarray,
    ap_prob: np.ndarray,
    ap_mean_ps: np.ndarray,
    carry_t: np.ndarray,
    carry_c: np.ndarray,
    last_click: np.ndarray,
    pending_ap: np.ndarray,
    wf: np.ndarray,
    wi: np.ndarray,
    wu: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tags in [e0, e1) from pairs emitted in [p0, p1) plus the carry; updates state in place.

    Alice's photons (channels 0..3) and Bob's (4..7) go to two streams; within a
    side the channel delays differ only by cable lengths, so each stream is
    nearly sorted by pair time and an insertion sort finishes it.
    """
    nch = N_GEN_CHANNELS
    np.random.seed(seed)  # numba's generator: only for the Poisson counts
    st = _seed_state(seed)
    # 1-2. detected events with delays and jitter; carried photons go first.
    # Event times: normalized exponential spacings (sorted uniforms) of a Poisson count;
    # the logarithms run in their own loop, off the event loop's critical path.
    span_p = float(p1 - p0)
    lam = rate_hz * span_p * 1e-12
    n_ev = np.random.poisson(lam) if lam > 0.0 else 0
    # work space comes from the caller's reusable buffers (fresh memory costs page faults)
    gaps = wf[: n_ev + 1] if n_ev + 1 <= wf.shape[0] else np.empty(n_ev + 1, np.float64)
    s_tot = 0.0
    for i in range(n_ev + 1):
        s_tot += _exponential(st)
        gaps[i] = s_tot
    scale = span_p / s_tot if s_tot > 0.0 else 0.0
    n_carry = carry_t.shape[0]
    cap = n_carry + n_ev + 1
    if 2 * cap <= wi.shape[0] and 2 * cap <= wu.shape[0]:
        at = wi[:cap]
        bt = wi[cap : 2 * cap]
        ac = wu[:cap]
        bc = wu[cap : 2 * cap]
    else:
        at = np.empty(cap, np.int64)
        ac = np.empty(cap, np.uint8)
        bt = np.empty(cap, np.int64)
        bc = np.empty(cap, np.uint8)
    # the per-side filter outputs reuse what the event stage leaves free
    wi_rest = wi[2 * cap :] if 2 * cap <= wi.shape[0] else wi[:0]
    wu_rest = wu[2 * cap :] if 2 * cap <= wu.shape[0] else wu[:0]
    na = 0
    nb = 0
    for i in range(n_carry):
        c = carry_c[i]
        if c < 4:
            at[na] = carry_t[i]
            ac[na] = c
            na += 1
        else:
            bt[nb] = carry_t[i]
            bc[nb] = c
            nb += 1
    inv24 = 1.0 / 16777216.0
    n_alias = alias_prob.shape[0]  # a power of two (checked by the caller)
    amask = _U64(n_alias - 1)
    for i in range(n_ev):
        tp = p0 + np.int64(gaps[i] * scale)
        # one 64-bit draw: low bits pick the class (alias method), 2 x 12 high bits the jitters
        r = _next_u64(st)
        idx = np.int64(r & amask)
        u = float((r >> _U64(8)) & _U64(0xFFFFFF)) * inv24
        k = idx if u < alias_prob[idx] else alias_idx[idx]
        # branch-free: both sides are written, the index advances only for a photon
        ca = ch_a[k]
        cb = ch_b[k]
        has_a = ca >= 0
        has_b = cb >= 0
        ia = ca if has_a else 0
        ib = cb if has_b else 4
        at[na] = tp + delays[ia] + jitter_table[ia, np.int64(r >> _U64(52))]
        ac[na] = ia
        na += np.int64(has_a)
        bt[nb] = tp + delays[ib] + jitter_table[ib, np.int64((r >> _U64(40)) & _U64(4095))]
        bc[nb] = ib
        nb += np.int64(has_b)
    _insertion_sort(at, ac, na)
    _insertion_sort(bt, bc, nb)
    # split: < e1 is emitted now, >= e1 carried over.
    sa = np.searchsorted(at[:na], e1)
    sb = np.searchsorted(bt[:nb], e1)
    n_keep = (na - sa) + (nb - sb)
    new_carry_t = np.empty(n_keep, np.int64)
    new_carry_c = np.empty(n_keep, np.int64)
    q = 0
    for i in range(sa, na):
        new_carry_t[q] = at[i]
        new_carry_c[q] = ac[i]
        q += 1
    for i in range(sb, nb):
        new_carry_t[q] = bt[i]
        new_carry_c[q] = bc[i]
        q += 1
    # 4. per side: photons, dark counts and pending afterpulses through the dead-time filter
    # (dead time is per channel and a side's channels live in one stream), then one
    # branch-free merge of the two sides.
    any_ap = False
    for c in range(nch):
        if ap_prob[c] > 0.0:
            any_ap = True
    fa_t, fa_c = _filter_side(
        at,
        ac,
        sa,
        0,
        e0,
        e1,
        dark_hz,
        dead_ps,
        ap_prob,
        ap_mean_ps,
        last_click,
        pending_ap,
        any_ap,
        st,
        wi_rest,
        wu_rest,
    )
    used = fa_t.shape[0] if fa_t.shape[0] <= wi_rest.shape[0] else 0
    fb_t, fb_c = _filter_side(
        bt,
        bc,
        sb,
        4,
        e0,
        e1,
        dark_hz,
        dead_ps,
        ap_prob,
        ap_mean_ps,
        last_click,
        pending_ap,
        any_ap,
        st,
        wi_rest[used:],
        wu_rest[used:],
    )
    res_t, res_c = _merge2(fa_t, fa_c, fb_t, fb_c)
    return res_t, res_c, new_carry_t, new_carry_c


@numba.njit(cache=True, nogil=True)
def _filter_side(
    pt: np.ndarray,
    pc: np.ndarray,
    n_p: int,
    c0: int,
    e0: int,
    e1: int,
    dark_hz: np.ndarray,
    dead_ps: np.ndarray,
    ap_prob: np.ndarray,
    ap_mean_ps: np.ndarray,
    last_click: np.ndarray,
    pending_ap: np.ndarray,
    any_ap: bool,
    st: np.ndarray,
    wi: np.ndarray,
    wu: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Clicks of channels ``c0..c0+3`` in [e0, e1): photons ``pt[:n_p]`` + darks + afterpulses."""
    big = np.int64(2**62)
    span = float(e1 - e0)
    # dark counts of this side: one Poisson process at the side's total rate
    dark_cum = np.empty(4, np.float64)
    d_tot = 0.0
    for k in range(4):
        d_tot += dark_hz[c0 + k]
        dark_cum[k] = d_tot
    lam_d = d_tot * span * 1e-12
    nd = np.random.poisson(lam_d) if lam_d > 0.0 else 0
    dt_ = np.empty(nd + 1, np.float64)
    dc = np.empty(nd, np.uint8)
    s_tot = 0.0
    for i in range(nd + 1):
        s_tot += _exponential(st)
        dt_[i] = s_tot
    for i in range(nd):
        dt_[i] = e0 + dt_[i] * (span / s_tot)
        u = _uniform(st) * d_tot
        k = 0
        while k < 3 and dark_cum[k] <= u:
            k += 1
        dc[i] = c0 + k
    n_in = n_p + nd
    cap = n_in + (n_in if any_ap else 0) + 4
    if cap <= wi.shape[0] and cap <= wu.shape[0]:
        out_t = wi[:cap]
        out_c = wu[:cap]
    else:
        out_t = np.empty(cap, np.int64)
        out_c = np.empty(cap, np.uint8)
    pmin = big
    pch = c0
    for c in range(c0, c0 + 4):
        if pending_ap[c] != NO_TIME and pending_ap[c] < pmin:
            pmin = pending_ap[c]
            pch = c
    i = 0
    j = 0
    w = 0
    while True:
        tp = pt[i] if i < n_p else big
        td = np.int64(dt_[j]) if j < nd else big
        ta = pmin if pmin < e1 else big
        if tp <= td and tp <= ta:
            if tp >= big:
                break
            t = tp
            c = np.int64(pc[i])
            i += 1
        elif td <= ta:
            t = td
            c = np.int64(dc[j])
            j += 1
        else:
            t = ta
            c = pch
            pending_ap[c] = NO_TIME
            pmin = big
            for cc in range(c0, c0 + 4):
                if pending_ap[cc] != NO_TIME and pending_ap[cc] < pmin:
                    pmin = pending_ap[cc]
                    pch = cc
        if t < e0:
            t = e0
        elif t >= e1:
            t = e1 - 1
        if t - last_click[c] < dead_ps[c]:
            continue
        out_t[w] = t
        out_c[w] = c
        w += 1
        last_click[c] = t
        if any_ap and ap_prob[c] > 0.0 and pending_ap[c] == NO_TIME and _uniform(st) < ap_prob[c]:
            tap = t + dead_ps[c] + 1 + np.int64(_exponential(st) * ap_mean_ps[c])
            pending_ap[c] = tap
            if tap < pmin:
                pmin = tap
                pch = c
    return out_t[:w], out_c[:w]


@numba.njit(cache=True, nogil=True)
def _merge2(
    at: np.ndarray, ac: np.ndarray, bt: np.ndarray, bc: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Merge two sorted (time, channel) streams; the inner loop is free of branches."""
    na = at.shape[0]
    nb = bt.shape[0]
    out_t = np.empty(na + nb, np.int64)
    out_c = np.empty(na + nb, np.uint8)
    i = 0
    j = 0
    k = 0
    while i < na and j < nb:
        ta = at[i]
        tb = bt[j]
        take_a = ta <= tb
        out_t[k] = ta if take_a else tb
        out_c[k] = ac[i] if take_a else bc[j]
        i += np.int64(take_a)
        j += np.int64(not take_a)
        k += 1
    while i < na:
        out_t[k] = at[i]
        out_c[k] = ac[i]
        i += 1
        k += 1
    while j < nb:
        out_t[k] = bt[j]
        out_c[k] = bc[j]
        j += 1
        k += 1
    return out_t, out_c


def alias_table(
    cum: np.ndarray, ch_a: np.ndarray, ch_b: np.ndarray, size: int = 32
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Walker's alias table of the class distribution, padded to ``size`` (a power of two).

    Returns (threshold, alias, ch_a, ch_b): draw ``i`` uniform in ``0..size-1`` and ``u``
    in [0, 1); the class is ``i`` if ``u < threshold[i]`` else ``alias[i]``. Padding
    classes have probability 0 and no photons.
    """
    probs = np.diff(np.concatenate([[0.0], np.asarray(cum, np.float64)]))
    probs = np.clip(probs, 0.0, None)
    n = probs.size
    if n > size or size & (size - 1):
        raise ValueError(f"alias table size {size} must be a power of two >= {n} classes")
    total = probs.sum()
    p = np.zeros(size)
    p[:n] = probs / total if total > 0 else 1.0 / n
    scaled = p * size
    thresh = np.ones(size)
    alias = np.arange(size, dtype=np.int64)
    small = [i for i in range(size) if scaled[i] < 1.0]
    large = [i for i in range(size) if scaled[i] >= 1.0]
    while small and large:
        s_i = small.pop()
        l_i = large[-1]
        thresh[s_i] = scaled[s_i]
        alias[s_i] = l_i
        scaled[l_i] -= 1.0 - scaled[s_i]
        if scaled[l_i] < 1.0:
            large.pop()
            small.append(l_i)
    pad_a = np.full(size, -1, np.int64)
    pad_b = np.full(size, -1, np.int64)
    pad_a[:n] = ch_a
    pad_b[:n] = ch_b
    return thresh, alias, pad_a, pad_b


class TagGenerator:
    """Stateful wrapper of the kernel: carry buffer, last click and pending afterpulse per channel.

    Channels 0..7 are Alice H, V, D, A and Bob H, V, D, A. ``delays_ps`` are the
    constant emission-to-tag delays per channel; ``jitter_ps`` is the Gaussian
    standard deviation, clipped at ``jitter_clip_sigma`` sigmas so the emission
    boundary (``pair_end + min(delay) - clip``) is exact.
    """

    def __init__(
        self,
        delays_ps: np.ndarray,
        jitter_ps: np.ndarray,
        dead_time_ps: np.ndarray,
        afterpulse_probability: np.ndarray,
        afterpulse_delay_ps: np.ndarray,
        *,
        jitter_clip_sigma: float = 6.0,
        start_ps: int = 0,
    ) -> None:
        self.delays_ps = self._vec(delays_ps, np.int64, "delays_ps")
        if np.any(self.delays_ps < 0):
            raise ValueError(f"delays_ps must be >= 0, got {self.delays_ps.tolist()}")
        self.jitter_ps = self._vec(jitter_ps, np.float64, "jitter_ps")
        self.dead_time_ps = self._vec(dead_time_ps, np.int64, "dead_time_ps")
        self.afterpulse_probability = self._vec(
            afterpulse_probability, np.float64, "afterpulse_probability"
        )
        self.afterpulse_delay_ps = self._vec(afterpulse_delay_ps, np.float64, "afterpulse_delay_ps")
        if np.any(self.jitter_ps < 0) or np.any(self.dead_time_ps < 0):
            raise ValueError("jitter_ps and dead_time_ps must be >= 0")
        if np.any((self.afterpulse_probability < 0) | (self.afterpulse_probability > 1)):
            raise ValueError("afterpulse_probability must be within [0, 1]")
        self.jitter_clip_ps = float(jitter_clip_sigma * float(self.jitter_ps.max()))
        # per channel: 4096 equal-probability jitter values (ps), indexed by 12 random bits
        self._jitter_table = np.ascontiguousarray(
            np.clip(
                np.round(np.outer(self.jitter_ps, _NORMAL_TABLE[:-1])),
                -self.jitter_clip_ps,
                self.jitter_clip_ps,
            ).astype(np.int64)
        )
        self._lead_ps = int(self.delays_ps.min()) - int(np.ceil(self.jitter_clip_ps)) - 1
        self.pair_time_ps = int(start_ps)
        self.emitted_ps = int(start_ps)
        self._carry_t = np.empty(0, np.int64)
        self._carry_c = np.empty(0, np.int64)
        self._last = np.full(N_GEN_CHANNELS, NO_TIME, np.int64)
        self._pending = np.full(N_GEN_CHANNELS, NO_TIME, np.int64)
        self._wf = np.empty(0, np.float64)
        self._wi = np.empty(0, np.int64)
        self._wu = np.empty(0, np.uint8)

    @staticmethod
    def _vec(x: np.ndarray, dtype: type, name: str) -> np.ndarray:
        a = np.ascontiguousarray(np.asarray(x, dtype=dtype))
        if a.shape != (N_GEN_CHANNELS,):
            raise ValueError(f"{name} must have {N_GEN_CHANNELS} entries, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must be finite, got {a.tolist()}")
        return a

    def _work(self, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reusable work buffers big enough for a step of ``lam`` expected events.

        Sized for 12 sigma above the mean, the carry, and room for afterpulses; the
        kernel falls back to fresh arrays in the (vanishing) case they are too small.
        """
        n = int(lam + 12.0 * np.sqrt(lam)) + self._carry_t.shape[0] + 1024
        need_i = 6 * n  # two event streams + two filter outputs with afterpulse room
        if self._wf.shape[0] < n + 1:
            self._wf = np.empty(2 * n + 1, np.float64)
        if self._wi.shape[0] < need_i:
            self._wi = np.empty(2 * need_i, np.int64)
            self._wu = np.empty(2 * need_i, np.uint8)
        return self._wf, self._wi, self._wu

    def emission_end_ps(self, pair_end_ps: int) -> int:
        """End of the tag interval that is complete once pairs up to ``pair_end_ps`` exist."""
        return max(self.emitted_ps, int(pair_end_ps) + self._lead_ps)

    def step(
        self,
        seed: int,
        duration_ps: int,
        rate_hz: float,
        cum: np.ndarray,
        ch_a: np.ndarray,
        ch_b: np.ndarray,
        dark_hz: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Emit pairs for ``duration_ps`` more; return (timestamps, channels, begin_ps, end_ps)."""
        if duration_ps <= 0:
            raise ValueError(f"duration_ps must be > 0, got {duration_ps}")
        if not (np.isfinite(rate_hz) and rate_hz >= 0):
            raise ValueError(f"rate_hz must be finite and >= 0, got {rate_hz}")
        cum = np.ascontiguousarray(cum, np.float64)
        ch_a = np.ascontiguousarray(ch_a, np.int64)
        ch_b = np.ascontiguousarray(ch_b, np.int64)
        if not (cum.shape == ch_a.shape == ch_b.shape) or cum.ndim != 1 or cum.size == 0:
            raise ValueError("cum, ch_a and ch_b must be 1-D of equal, non-zero length")
        if not (
            np.all((ch_a >= -1) & (ch_a < 4)) and np.all((ch_b == -1) | ((ch_b >= 4) & (ch_b < 8)))
        ):
            raise ValueError("class channels must be 0..3 (ch_a), 4..7 (ch_b) or -1 for none")
        dark = self._vec(dark_hz, np.float64, "dark_hz")
        if np.any(dark < 0):
            raise ValueError(f"dark_hz must be >= 0, got {dark.tolist()}")
        p0 = self.pair_time_ps
        p1 = p0 + int(duration_ps)
        e0 = self.emitted_ps
        e1 = self.emission_end_ps(p1)
        alias_prob, alias_idx, ch_a, ch_b = alias_table(cum, ch_a, ch_b)
        ts, ch, self._carry_t, self._carry_c = _step_kernel(
            int(seed) & 0xFFFFFFFF,
            p0,
            p1,
            e0,
            e1,
            float(rate_hz),
            alias_prob,
            alias_idx,
            ch_a,
            ch_b,
            self.delays_ps,
            self._jitter_table,
            dark,
            self.dead_time_ps,
            self.afterpulse_probability,
            self.afterpulse_delay_ps,
            self._carry_t,
            self._carry_c,
            self._last,
            self._pending,
            *self._work(rate_hz * duration_ps * 1e-12),
        )
        self.pair_time_ps = p1
        self.emitted_ps = e1
        return ts, ch, e0, e1
