"""What one site of a QKD link needs to know: its detectors, the epoch and frame sizes, the limits.

Each site knows only its own tagger's channels (``detectors``: label -> channel, labels
H, V, D, A). Basis and outcome of a detection follow the core's BBM92 convention
(``coincidence`` module docstring of ``_qkd``): Z = H/V, X = D/A; outcome 0 for H and
D, 1 for V and A. The Bell state (and per-basis overrides) says whether the analysing
side's outcomes are equal to the sender's (``correlated``) or opposite; the analyser
flips its bits in an anti-correlated basis so that both sifted keys agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from coincidence import QkdInputError, RoleMap
from distill import FiniteKeyConfig

#: basis bit and outcome bit of each detector label (Z = H/V is 0, X = D/A is 1)
LABEL_BITS: Mapping[str, tuple[int, int]] = {"H": (0, 0), "V": (0, 1), "D": (1, 0), "A": (1, 1)}


#: how the distillation messages can be authenticated (``LinkConfig.auth``)
AUTH_MODES = ("channel", "wegman-carter")


class LinkConfigError(ValueError):
    """A link setting is out of range: names the setting and the allowed range."""


@dataclass(frozen=True)
class LinkConfig:
    """One site's link settings (both sites must agree on everything except ``detectors``).

    Attributes:
        link: the link's name (channel link id, block-id prefix, telemetry tag).
        detectors: this site's channel of each detector label (H, V, D, A).
        bell_state: the source's state, ``phi+`` ... ``psi-`` (sets the correlations).
        correlation: per-basis override, e.g. ``{"X": "anti"}``.
        epoch_ps: length of a sender epoch on the sender's clock, ps.
        resolution_ps: the sender's time resolution on the channel, ps.
        window_ps: coincidence window, full width, ps (pairs within +-window/2).
        frame_bits: sifted bits per distillation frame.
        q_expected: expected QBER, sets the first frame's sample size (later frames use
            the last measured QBER).
        finite: the finite-key parameters fixed in advance (tolerated QBER, epsilons).
        max_offset_ps, max_ppm: clock search range of the analyser.
        acquire_span_ps: sender-clock data the clock acquisition needs, ps.
        track_window_ps: clock tracking window, ps.
        max_pending_epochs: epochs the analyser holds while acquiring the clock; older
            ones are answered with no pairs (their detections give no key).
        cascade_prefer: ``"leak"`` (fewest disclosed parities, hundreds of round trips a
            frame) or ``"rounds"`` (a few % more leak, up to 5x fewer round trips: the
            choice for a WAN, where each round trip costs the channel's latency);
            see docs/DISTILL.md.
        auth: how the distillation messages are authenticated: ``"channel"`` (the
            channel's CURVE keys) or ``"wegman-carter"`` (information-theoretic tags
            from a pool started with a pre-shared secret and refilled from each block;
            the bits consumed are taken out of the block, so the secret rate counts them).
    """

    link: str = "link"
    detectors: Mapping[str, int] = field(default_factory=lambda: {"H": 0, "V": 1, "D": 2, "A": 3})
    bell_state: str = "phi+"
    correlation: Mapping[str, str] = field(default_factory=dict)
    epoch_ps: int = 10**12
    resolution_ps: int = 125
    window_ps: int = 2_000
    frame_bits: int = 2**18
    q_expected: float = 0.03
    finite: FiniteKeyConfig = field(default_factory=FiniteKeyConfig)
    max_offset_ps: float = 1e12
    max_ppm: float = 100.0
    acquire_span_ps: int = 10 * 10**12
    track_window_ps: int = 10**12
    max_pending_epochs: int = 16
    cascade_prefer: str = "leak"
    auth: str = "channel"

    def __post_init__(self) -> None:
        if self.cascade_prefer not in ("leak", "rounds"):
            raise LinkConfigError(
                f"link.cascade_prefer must be 'leak' or 'rounds', got {self.cascade_prefer!r}"
            )
        if self.auth not in AUTH_MODES:
            raise LinkConfigError(
                f"link.auth must be one of {', '.join(AUTH_MODES)}, got {self.auth!r}"
            )
        checks = (
            ("epoch_ps", self.epoch_ps, 10**6, 100 * 10**12),
            ("resolution_ps", self.resolution_ps, 1, 10**6),
            ("window_ps", self.window_ps, 2, 10**9),
            ("frame_bits", self.frame_bits, 1024, 2**24),
            ("max_pending_epochs", self.max_pending_epochs, 1, 10_000),
            ("acquire_span_ps", self.acquire_span_ps, 10**9, 10**15),
            ("track_window_ps", self.track_window_ps, 10**8, 10**14),
        )
        for name, value, lo, hi in checks:
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise LinkConfigError(f"link.{name} must be an integer, got {value!r}")
            if not lo <= int(value) <= hi:
                raise LinkConfigError(f"link.{name} = {value} outside {lo}..{hi}")
        if not 0.0 <= self.q_expected < self.finite.q_tol:
            raise LinkConfigError(
                f"link.q_expected = {self.q_expected} must be in [0, q_tol = {self.finite.q_tol})"
            )
        if not 0 < self.max_offset_ps <= 10 * 10**12 or not 0 < self.max_ppm <= 1000:
            raise LinkConfigError(
                f"link.max_offset_ps {self.max_offset_ps} / max_ppm {self.max_ppm} out of range"
            )
        seen: set[int] = set()
        for label, ch in self.detectors.items():
            if label not in LABEL_BITS:
                raise LinkConfigError(f"link.detectors: unknown label {label!r} (H, V, D, A)")
            if isinstance(ch, bool) or not isinstance(ch, int | np.integer) or not 0 <= ch < 255:
                raise LinkConfigError(f"link.detectors[{label!r}] = {ch!r} is not a channel 0..254")
            if int(ch) in seen:
                raise LinkConfigError(f"link.detectors: channel {ch} is used twice")
            seen.add(int(ch))
        for a, b in (("H", "V"), ("D", "A")):
            if (a in self.detectors) != (b in self.detectors):
                raise LinkConfigError(f"link.detectors: basis {a}/{b} needs both detectors")
        if not self.detectors:
            raise LinkConfigError("link.detectors is empty")
        self.correlated("Z")  # validates bell_state and overrides

    def correlated(self, basis: str) -> bool:
        """True if both sides' right outcomes in ``basis`` are equal (the core's convention)."""
        # The core's RoleMap holds the Bell-state table; both sides' labels are only
        # needed to build it (channels here are placeholders).
        labels = {"H": 0, "V": 1, "D": 2, "A": 3}
        try:
            roles = RoleMap(
                alice=labels,
                bob={k: v + 4 for k, v in labels.items()},
                bell_state=self.bell_state,
                correlation=dict(self.correlation),
            )
            return roles.correlated(basis)
        except QkdInputError as e:
            raise LinkConfigError(f"link: {e}") from None

    def tables(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel lookup (256 entries): basis bit and outcome bit; 255 = not a detector."""
        basis = np.full(256, 255, np.uint8)
        outcome = np.full(256, 255, np.uint8)
        for label, ch in self.detectors.items():
            basis[int(ch)], outcome[int(ch)] = LABEL_BITS[label]
        return basis, outcome

    def basis_of_channel(self) -> dict[int, int]:
        """Channel -> basis bit, what the channel's epoch builder takes."""
        return {int(ch): LABEL_BITS[label][0] for label, ch in self.detectors.items()}

    def flip_of_basis(self) -> np.ndarray:
        """Per basis bit (0 Z, 1 X): 1 where the analyser flips its outcome (anti-correlated)."""
        return np.array([0 if self.correlated(b) else 1 for b in ("Z", "X")], np.uint8)
