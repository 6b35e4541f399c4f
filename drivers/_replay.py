"""FileReplaySource: replay recorded time tags through the TagSource seam.

Reads any tag file ``coincidence.iter_tag_file`` supports (``.npz``, ``.ptu``);
the file is opened and its header or arrays checked when the source is built, so
a missing or foreign file raises :class:`coincidence.TagFileError` (naming the
path) at once rather than on the first read. Batches are re-cut on a grid of
``batch_duration_ps`` so acquisition code sees the same cadence as from a live
time tagger; ``speed`` paces the replay in wall-clock time (1.0 = real time,
None = as fast as the reader asks).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from coincidence import TagBatch, iter_tag_file

from ._tagsource import TagSource


class FileReplaySource(TagSource):
    """Replays a tag file (or an in-memory TagBatch) as contiguous batches.

    Args:
        source: path of a tag file (``.npz``, ``.ptu``), or a TagBatch.
        n_channels: channel count the consumer expects; tags at or above it raise.
        batch_duration_ps: length of each replayed batch, picoseconds.
        speed: wall-clock pacing factor (None: no pacing).
    """

    def __init__(
        self,
        source: str | Path | TagBatch,
        n_channels: int,
        batch_duration_ps: int = 10**10,
        speed: float | None = None,
    ) -> None:
        if batch_duration_ps <= 0:
            raise ValueError(f"batch_duration_ps must be > 0, got {batch_duration_ps}")
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be > 0 or None, got {speed}")
        self._n = int(n_channels)
        self._step = int(batch_duration_ps)
        self._speed = speed
        # iter_tag_file checks the file now (TagFileError naming the path), not on first read.
        batches = iter([source]) if isinstance(source, TagBatch) else iter_tag_file(Path(source))
        self._pieces = self._cut(batches)
        self._t0: float | None = None
        self._first_ps: int | None = None

    @property
    def n_channels(self) -> int:
        """Channel count."""
        return self._n

    def _cut(self, batches: Iterator[TagBatch]) -> Iterator[TagBatch]:
        """Re-cut the reader's batches on one grid of ``batch_duration_ps`` from the first begin."""
        carry: TagBatch | None = None
        for batch in batches:
            rest = batch if carry is None else TagBatch.concatenate([carry, batch])
            while rest.duration_ps >= self._step:
                piece, rest = rest.split(rest.begin_ps + self._step)
                yield piece
            carry = rest
        if carry is not None and (carry.duration_ps > 0 or len(carry)):
            yield carry

    def read(self, timeout_s: float = 1.0) -> TagBatch | None:
        """Next batch; None at the end of the file."""
        batch = next(self._pieces, None)
        if batch is None:
            return None
        batch.check_channels(self._n, "FileReplaySource")
        if self._speed is not None:
            if self._t0 is None:
                self._t0, self._first_ps = time.monotonic(), batch.begin_ps
            due = self._t0 + (batch.end_ps - int(self._first_ps or 0)) * 1e-12 / self._speed
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, timeout_s))
        return batch
