"""Run folders: one name format for every command that writes one (demo, sample, ...).

``<root>/<kind>-<UTC stamp>`` with the stamp in ISO 8601 basic format,
``20261204T165700Z``: sortable by name, the same in every time zone, no colons (valid
on every file system). A second run within the same second gets ``-2``, ``-3``, ...
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

#: ``strftime`` format of the stamp (UTC, ISO 8601 basic).
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


def run_stamp(when: datetime | None = None) -> str:
    """The UTC stamp of a run folder name, e.g. ``20261204T165700Z``."""
    return (when or datetime.now(UTC)).astimezone(UTC).strftime(STAMP_FORMAT)


def new_run_dir(root: Path, kind: str, when: datetime | None = None) -> Path:
    """Create and return a fresh ``root/<kind>-<stamp>`` folder (never an existing one)."""
    base = f"{kind}-{run_stamp(when)}"
    root.mkdir(parents=True, exist_ok=True)
    k = 1
    while True:
        path = root / (base if k == 1 else f"{base}-{k}")
        try:
            path.mkdir()
        except FileExistsError:
            k += 1
            continue
        return path
