"""The demo's adapter to the QKD link engine (controller/qkd_link*, built on its own branch).

``qnet demo --link`` needs, at both sites: the engine reading that site's tagger
stream, talking to the other site over a channel endpoint through the WAN
emulator, writing identical blocks into the site's key store; and, at the end,
the figures of the verdict. This module is the one place that knows the engine's
API, so the demo stays the same when the engine changes.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class LinkEngineMissing(RuntimeError):
    """The link engine is not part of this installation."""


class RunningLink(Protocol):
    """What the demo needs of a running link."""

    def figures(self) -> dict[str, Any]:
        """The verdict's figures (see :func:`controller.demo_link.judge`)."""

    def stop(self) -> None:
        """Stop both sites; idempotent."""


def available() -> bool:
    """True when the link engine is installed."""
    return importlib.util.find_spec("controller.qkd_link") is not None


def start(
    *,
    cfg: Any,
    keys: Path,
    stores: tuple[Path, Path],
    link: str,
    wan: dict[str, float],
    wan_factory: Callable[..., Any],
    open_tagger: Callable[[Any, str], tuple[Any, Any]],
    run_dir: Path,
) -> RunningLink:
    """Start the link engine at both sites (see the module docstring)."""
    if not available():
        raise LinkEngineMissing(
            "the QKD link engine (controller/qkd_link) is not part of this installation"
        )
    raise LinkEngineMissing("the QKD link engine's API is not wired into the demo yet")
