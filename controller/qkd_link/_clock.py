"""The analyser's clock model: the core's reference-free acquisition and tracking.

``coincidence.ClockTracker`` finds and follows tagger B's clock against A's from
the photon timing alone (offset up to +-1 s, frequency up to +-100 ppm). The link
feeds it the sender's times (A, from the channel) and its own tags (B).
"""

from __future__ import annotations

from typing import Any

from ._config import LinkConfig


def make_tracker(cfg: LinkConfig) -> Any:
    """A ``coincidence.ClockTracker`` set up from the link's clock settings."""
    from coincidence import ClockTracker

    return ClockTracker(
        max_offset_ps=cfg.max_offset_ps,
        max_ppm=cfg.max_ppm,
        acquire_span_ps=cfg.acquire_span_ps,
        window_ps=cfg.track_window_ps,
        resolution_ps=min(100, cfg.window_ps),
    )
