"""Synthetic tag streams with known pairs, for tests, benchmarks and the demo."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._errors import CoincidenceError
from ._tags import MAX_CHANNELS, TagBatch


def _check_rate(name: str, value: float) -> float:
    v = float(value)
    if not np.isfinite(v) or v < 0:
        raise CoincidenceError(f"generate_pairs: {name} must be a finite rate >= 0 Hz, got {value}")
    return v


def generate_pairs(
    *,
    duration_ps: int,
    pair_rate_hz: float,
    noise_rate_hz: float | Sequence[float],
    n_channels: int,
    pair_channels: Sequence[tuple[int, int]],
    delays_ps: Sequence[int],
    jitter_ps: float = 0.0,
    seed: int = 0,
    begin_ps: int = 0,
) -> TagBatch:
    """One sorted batch covering ``[begin_ps, begin_ps + duration_ps)`` with known pairs.

    Pairs are emitted as a Poisson process at ``pair_rate_hz``; each lands on one of
    ``pair_channels`` (chosen uniformly), each of its two tags delayed by its
    channel's ``delays_ps`` plus independent Gaussian jitter (``jitter_ps`` rms,
    rounded to whole ps). Each channel also gets independent Poisson noise at
    ``noise_rate_hz`` (one rate for all, or one per channel). Tags that land
    outside the interval are dropped, so the stream is a stationary cut.
    Deterministic for a given ``seed``.
    """
    if isinstance(duration_ps, bool) or not isinstance(duration_ps, int | np.integer):
        raise CoincidenceError(f"generate_pairs: duration_ps must be an integer, got {duration_ps}")
    if duration_ps < 0:
        raise CoincidenceError(f"generate_pairs: duration_ps must be >= 0, got {duration_ps}")
    if not 1 <= n_channels <= MAX_CHANNELS:
        raise CoincidenceError(f"generate_pairs: n_channels must be in 1..256, got {n_channels}")
    pair_rate = _check_rate("pair_rate_hz", pair_rate_hz)
    noise = np.asarray(noise_rate_hz, dtype=np.float64)
    if noise.ndim > 1 or noise.size not in (1, n_channels):
        raise CoincidenceError(
            f"generate_pairs: noise_rate_hz needs one rate or {n_channels} (one per channel), "
            f"got shape {noise.shape}"
        )
    noise = np.broadcast_to(noise, (n_channels,))
    for k, r in enumerate(noise):
        _check_rate(f"noise_rate_hz[{k}]", r)
    delays = np.asarray(delays_ps, dtype=np.int64)
    if delays.shape != (n_channels,):
        raise CoincidenceError(
            f"generate_pairs: delays_ps needs {n_channels} entries, got shape {delays.shape}"
        )
    pc = np.asarray(pair_channels, dtype=np.int64).reshape(-1, 2)
    if pair_rate > 0 and pc.shape[0] == 0:
        raise CoincidenceError("generate_pairs: pair_rate_hz > 0 needs at least one pair channel")
    if pc.size and (pc.min() < 0 or pc.max() >= n_channels):
        raise CoincidenceError(
            f"generate_pairs: pair_channels {pc.tolist()} name channels outside 0..{n_channels - 1}"
        )
    if not np.isfinite(jitter_ps) or jitter_ps < 0:
        raise CoincidenceError(f"generate_pairs: jitter_ps must be >= 0, got {jitter_ps}")

    rng = np.random.default_rng(seed)
    seconds = duration_ps * 1e-12
    n_pairs = int(rng.poisson(pair_rate * seconds)) if pair_rate > 0 else 0
    n_noise = rng.poisson(noise * seconds)
    # times relative to begin; pair emission times and the choice of channel pair
    t0 = rng.integers(0, max(duration_ps, 1), n_pairs, dtype=np.int64)
    which = rng.integers(0, max(pc.shape[0], 1), n_pairs)
    ch_a = pc[which, 0] if n_pairs else np.empty(0, np.int64)
    ch_b = pc[which, 1] if n_pairs else np.empty(0, np.int64)
    ta = t0 + delays[ch_a]
    tb = t0 + delays[ch_b]
    if jitter_ps > 0 and n_pairs:
        ta += np.rint(rng.normal(0.0, jitter_ps, n_pairs)).astype(np.int64)
        tb += np.rint(rng.normal(0.0, jitter_ps, n_pairs)).astype(np.int64)
    total_noise = int(n_noise.sum())
    tn = rng.integers(0, max(duration_ps, 1), total_noise, dtype=np.int64)
    cn = np.repeat(np.arange(n_channels, dtype=np.int64), n_noise)
    t = np.concatenate([ta, tb, tn])
    c = np.concatenate([ch_a, ch_b, cn])
    keep = (t >= 0) & (t < duration_ps)
    t, c = t[keep], c[keep]
    # one sort of packed keys (time << 8 | channel) is much faster than an argsort
    key = (t << 8) | c
    key.sort()
    return TagBatch(
        (key >> 8) + int(begin_ps),
        (key & 0xFF).astype(np.uint8),
        int(begin_ps),
        int(begin_ps) + int(duration_ps),
    )


def generate_two_clocks(
    *,
    duration_ps: int,
    singles_rate_hz: float,
    heralding: float,
    offset_ps: float = 0.0,
    ppm: float = 0.0,
    phase_noise_ps_per_sqrt_s: float = 0.0,
    jitter_ps: float = 0.0,
    seed: int = 0,
    begin_ps: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Two taggers on free-running clocks seeing photon pairs: (times_a_ps, times_b_ps), sorted.

    Over ``[begin_ps, begin_ps + duration_ps)`` of true time, each side detects
    ``singles_rate_hz`` (Poisson); a fraction ``heralding`` of each side's
    detections has a partner on the other side (same emission time, independent
    Gaussian ``jitter_ps`` per side). Tagger A's clock is true time; tagger B's
    reads ``t_b = t + offset_ps + ppm 1e-6 (t - begin_ps) + w(t)``, ``w`` a
    random walk of ``phase_noise_ps_per_sqrt_s`` per sqrt(s) (clock phase
    noise, sampled every ms and interpolated). Deterministic for a ``seed``.
    """
    if isinstance(duration_ps, bool) or not isinstance(duration_ps, int | np.integer):
        raise CoincidenceError(
            f"generate_two_clocks: duration_ps must be an integer, got {duration_ps}"
        )
    if duration_ps <= 0:
        raise CoincidenceError(f"generate_two_clocks: duration_ps must be > 0, got {duration_ps}")
    rate = _check_rate("singles_rate_hz", singles_rate_hz)
    if not 0.0 <= heralding <= 1.0:
        raise CoincidenceError(f"generate_two_clocks: heralding must be in [0, 1], got {heralding}")
    for name, v in (
        ("phase_noise_ps_per_sqrt_s", phase_noise_ps_per_sqrt_s),
        ("jitter_ps", jitter_ps),
    ):
        if not (np.isfinite(v) and v >= 0):
            raise CoincidenceError(f"generate_two_clocks: {name} must be >= 0, got {v}")
    if not (np.isfinite(offset_ps) and np.isfinite(ppm)):
        raise CoincidenceError("generate_two_clocks: offset_ps and ppm must be finite")
    rng = np.random.default_rng(seed)
    seconds = duration_ps * 1e-12
    n_pair = int(rng.poisson(rate * heralding * seconds))
    n_single = rng.poisson(rate * (1.0 - heralding) * seconds, 2)
    tp = rng.integers(0, duration_ps, n_pair, dtype=np.int64)
    ta = np.concatenate([tp, rng.integers(0, duration_ps, n_single[0], dtype=np.int64)])
    tb = np.concatenate([tp, rng.integers(0, duration_ps, n_single[1], dtype=np.int64)])
    if jitter_ps > 0:
        ta[:n_pair] += np.rint(rng.normal(0.0, jitter_ps, n_pair)).astype(np.int64)
        tb[:n_pair] += np.rint(rng.normal(0.0, jitter_ps, n_pair)).astype(np.int64)
    ta.sort()
    tb.sort()
    tbf = tb.astype(np.float64)
    shift = offset_ps + ppm * 1e-6 * tbf
    if phase_noise_ps_per_sqrt_s > 0:
        step_ps = 10**9  # 1 ms
        n_steps = duration_ps // step_ps + 2
        walk = np.concatenate(
            ([0.0], np.cumsum(rng.normal(0.0, phase_noise_ps_per_sqrt_s * np.sqrt(1e-3), n_steps)))
        )
        shift += np.interp(tbf, np.arange(walk.size) * float(step_ps), walk)
    tb = tb + np.rint(shift).astype(np.int64)
    tb.sort()  # jitter and noise may swap neighbours
    return ta + int(begin_ps), tb + int(begin_ps)
