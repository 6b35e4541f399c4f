"""Channel-delay calibration and drift tracking from raw tags (pure; uses the core's delay finder).

Every Alice channel is correlated with every Bob channel (``find_delay``;
cross-basis pairs still coincide, so all 16 pairs usually have a peak). Each
significant pair ``(a, b)`` gives an equation ``delay_b - delay_a = d_ab``;
the delays are their least-squares solution with Alice's first channel at 0,
weighted by significance. Channels without any significant pair keep their
previous delay; if no pair is significant the calibration fails with a clear
message (no light? wrong channels?).

``delay_ps`` follows the core's convention: it is subtracted from a channel's
timestamps, so aligned partners have equal corrected times.

Two independently clocked taggers: ``fit_clock`` fits Bob's tagger's offset and
ppm drift against Alice's (``track_drift``), the merger maps the drift away
(``pin_clock``: the constant offset stays in the channel delays), and
the core's ``DriftTracker`` refits the line as later captures measure the residual offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coincidence import (
    ClockDrift,
    CoincidenceError,
    NoSignificantPeakError,
    RoleMap,
    TagBatch,
    find_delay,
    track_drift,
)


class CalibrationError(RuntimeError):
    """No usable correlation peak: the message says what was searched and found."""


def format_with_uncertainty(value: float, uncertainty: float, unit: str = "ps") -> str:
    """``9 793 455 +- 3 ps``: value rounded to its uncertainty's first digit, grouped by 3."""
    if not math.isfinite(value):
        return f"{value} {unit}"
    if not (math.isfinite(uncertainty) and uncertainty > 0):
        return f"{value:,.0f} {unit}".replace(",", " ")
    decimals = max(0, -math.floor(math.log10(uncertainty)))
    v = f"{value:,.{decimals}f}".replace(",", " ")
    return f"{v} +- {uncertainty:.{decimals}f} {unit}"


@dataclass(frozen=True)
class CalibrationResult:
    """Delays per channel (ps), the pairwise estimates used, and the channels left unchanged.

    ``uncertainties_ps`` are the delays' 1-sigma uncertainties relative to the
    reference channel (0 for it; nan where unknown), from the covariance of the
    weighted least-squares solution over the pairs' delay uncertainties.
    """

    delays_ps: np.ndarray
    pairs: dict[tuple[int, int], dict[str, float]] = field(default_factory=dict)
    unresolved: tuple[int, ...] = ()
    uncertainties_ps: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def uncertainty(self, channel: int) -> float:
        """1-sigma uncertainty (ps) of ``channel``'s delay (nan if unknown)."""
        u = self.uncertainties_ps
        return float(u[channel]) if 0 <= channel < u.size else math.nan

    def summary(self) -> dict[str, Any]:
        """JSON-friendly digest for replies and logs."""
        return {
            "delays_ps": [int(x) for x in self.delays_ps],
            "delay_uncertainties_ps": [
                round(float(u), 2) if math.isfinite(u) else None for u in self.uncertainties_ps
            ],
            "pairs": {
                f"{a}-{b}": {k: round(v, 2) for k, v in info.items()}
                for (a, b), info in self.pairs.items()
            },
            "unresolved": list(self.unresolved),
        }

    def describe(self) -> str:
        """One line per calibrated channel: ``channel 4: 9 793 455 +- 3 ps``."""
        chans = sorted(
            {c for pair in self.pairs for c in pair} - set(self.unresolved),
        )
        return "; ".join(
            f"channel {c}: {format_with_uncertainty(float(self.delays_ps[c]), self.uncertainty(c))}"
            for c in chans
        )


def find_channel_delays(
    batch: TagBatch,
    roles: RoleMap,
    n_channels: int,
    *,
    max_delay_ps: int,
    resolution_ps: int = 20,
    min_significance: float = 6.0,
    previous_ps: np.ndarray | None = None,
) -> CalibrationResult:
    """Delays of every role channel from a capture of raw tags (see the module docstring)."""
    prev = (
        np.zeros(n_channels, np.int64)
        if previous_ps is None
        else np.asarray(previous_ps, np.int64).copy()
    )
    alice = sorted(set(roles.alice.values()))
    bob = sorted(set(roles.bob.values()))
    times = {c: batch.timestamps[batch.channels == c] for c in (*alice, *bob)}
    pairs: dict[tuple[int, int], dict[str, float]] = {}
    for a in alice:
        for b in bob:
            if times[a].size < 2 or times[b].size < 2:
                continue
            try:
                est = find_delay(
                    times[a],
                    times[b],
                    max_delay_ps=max_delay_ps,
                    resolution_ps=resolution_ps,
                    min_significance=min_significance,
                )
            except NoSignificantPeakError:
                continue
            pairs[(a, b)] = {
                "delay_ps": float(est.delay_ps),
                "delay_uncertainty_ps": est.delay_uncertainty_ps,
                "significance": est.significance,
            }
    if not pairs:
        counts = {c: int(t.size) for c, t in times.items()}
        raise CalibrationError(
            f"no significant coincidence peak between Alice {alice} and Bob {bob} within "
            f"+-{max_delay_ps} ps over {batch.duration_ps * 1e-12:.3g} s (tags per channel: "
            f"{counts}); is the source on and are the channels right?"
        )
    chans = [*alice, *bob]
    col = {c: k for k, c in enumerate(chans)}
    rows, rhs, weights = [], [], []
    for (a, b), info in pairs.items():
        r = np.zeros(len(chans))
        r[col[b]], r[col[a]] = 1.0, -1.0
        rows.append(r)
        rhs.append(info["delay_ps"])
        # inverse variance (rounding to whole ps adds 1/12 ps^2)
        weights.append(1.0 / (info["delay_uncertainty_ps"] ** 2 + 1.0 / 12.0))
    # connected component of the reference channel (first Alice channel with a pair)
    linked = {alice[0]} if any(a == alice[0] for a, _ in pairs) else {next(iter(pairs))[0]}
    changed = True
    while changed:
        changed = False
        for a, b in pairs:
            if (a in linked) != (b in linked):
                linked |= {a, b}
                changed = True
    ref = alice[0] if alice[0] in linked else min(linked)
    anchor = np.zeros(len(chans))
    anchor[col[ref]] = 1.0
    rows.append(anchor)
    rhs.append(0.0)
    weights.append(1e12)
    w = np.sqrt(np.asarray(weights))
    design = np.asarray(rows) * w[:, None]
    sol, *_ = np.linalg.lstsq(design, np.asarray(rhs) * w, rcond=None)
    # covariance of the solution; channels outside the reference's component are unknown
    cov = np.linalg.pinv(design.T @ design)
    unc = np.full(n_channels, math.nan)
    delays = prev.copy()
    for c in linked:
        delays[c] = round(float(sol[col[c]]))
        unc[c] = math.sqrt(max(0.0, float(cov[col[c], col[c]])))
    # shift so that the reference keeps its previous delay (no jump in the time base)
    delays[list(linked)] += prev[ref] - delays[ref]
    unresolved = tuple(c for c in chans if c not in linked)
    return CalibrationResult(delays, pairs, unresolved, unc)


def track_shift(
    batch: TagBatch,
    roles: RoleMap,
    delays_ps: np.ndarray,
    *,
    max_shift_ps: int,
    resolution_ps: int = 20,
    min_significance: float = 6.0,
) -> float | None:
    """Residual delay of Bob's channels relative to Alice's after applying ``delays_ps``.

    Merges each side's channels (delay-corrected) and finds the peak within
    ``+-max_shift_ps``; add the result to every Bob delay to follow a drift.
    None when there is no significant peak.
    """
    d = np.asarray(delays_ps, np.int64)
    sides = []
    for chans in (roles.alice.values(), roles.bob.values()):
        mask = np.isin(batch.channels, list(chans))
        t = batch.timestamps[mask] - d[batch.channels[mask]]
        sides.append(np.sort(t))
    if sides[0].size < 2 or sides[1].size < 2:
        return None
    try:
        est = find_delay(
            sides[0],
            sides[1],
            max_delay_ps=max_shift_ps,
            resolution_ps=resolution_ps,
            min_significance=min_significance,
        )
    except NoSignificantPeakError:
        return None
    return float(est.delay_ps)


# ---------------------------------------------------------------- two taggers' clocks


def pin_clock(fit: ClockDrift, pin_ps: float) -> ClockDrift:
    """The merger's map for ``fit`` that removes the drift but leaves ``pin_ps`` of offset.

    Clock offset and fiber delay cannot be told apart, so the constant part
    (``fit``'s offset at the calibration) stays in the channel delays, as with a
    shared clock; only the change of the offset since then is mapped away.
    """
    return ClockDrift(
        fit.offset0_ps - pin_ps,
        fit.drift_ppm,
        fit.window_times_ps,
        fit.window_offsets_ps - pin_ps,
        fit.residual_rms_ps,
        fit.offset0_uncertainty_ps,
        fit.drift_uncertainty_ppm,
        fit.window_uncertainties_ps,
    )


def fit_clock(
    batch: TagBatch,
    roles: RoleMap,
    current: ClockDrift | None,
    *,
    max_delay_ps: int,
    resolution_ps: int = 20,
    n_windows: int = 8,
    max_drift_ppm: float = 100.0,
    min_significance: float = 6.0,
) -> tuple[ClockDrift, float, TagBatch]:
    """Offset and drift of Bob's tagger vs Alice's from a merged capture: (fit, pin, fixed capture).

    ``batch`` holds Bob's tags already mapped with ``current`` (None: unmapped);
    the residual offset + ppm of one same-label Alice/Bob pair (H-H first) is fitted
    with ``track_drift`` over ``n_windows`` windows, composed with ``current`` into
    the raw map ``fit``. ``pin`` (ps) is that map's offset at the capture's middle,
    to be kept in the channel delays (see ``pin_clock``); Bob's captured tags are
    mapped as ``pin_clock(fit, pin)`` would have mapped them, so that
    ``find_channel_delays`` can run on the returned batch.
    """
    if n_windows < 2:
        raise CalibrationError(f"n_windows must be >= 2 to fit a drift, got {n_windows}")
    window_ps = max(1, batch.duration_ps // n_windows)
    labels = [lab for lab in ("H", "V", "D", "A") if lab in roles.alice and lab in roles.bob]
    errors = []
    for lab in labels:
        a, b = roles.alice[lab], roles.bob[lab]
        ta, tb = batch.timestamps[batch.channels == a], batch.timestamps[batch.channels == b]
        try:
            resid = track_drift(
                ta,
                tb,
                window_ps=window_ps,
                max_delay_ps=max_delay_ps,
                resolution_ps=resolution_ps,
                max_drift_ppm=max_drift_ppm,
                min_significance=min_significance,
            )
        except CoincidenceError as exc:
            errors.append(f"{lab}-{lab} (channels {a}, {b}): {exc}")
            continue
        total = (current or ClockDrift.identity()).compose(resid)
        pin = float(total.offset_at(0.5 * (batch.begin_ps + batch.end_ps)))
        bob = np.isin(batch.channels, list(roles.bob.values()))
        ts = batch.timestamps.copy()
        ts[bob] = resid.to_clock_a(ts[bob]) + round(pin / (1.0 + total.drift_ppm * 1e-6))
        keep = (ts >= batch.begin_ps) & (ts < batch.end_ps)
        fixed = TagBatch.sorted(ts[keep], batch.channels[keep], batch.begin_ps, batch.end_ps)
        return total, pin, fixed
    raise CalibrationError(
        f"no clock offset/drift between the taggers within +-{max_delay_ps} ps over "
        f"{batch.duration_ps * 1e-12:.3g} s: " + ("; ".join(errors) or "no same-label pair")
    )
