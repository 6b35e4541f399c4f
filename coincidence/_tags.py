"""The time-tag model: a contiguous stretch of detection events.

Timestamps are int64 picoseconds, non-decreasing. Channels are small
non-negative integers (uint8, so at most 256 channels). A batch covers the
half-open interval ``[begin_ps, end_ps)``: quiet stretches with no tags still
count as measured time.

Representable time range: ``|t| <= MAX_TIMESTAMP_PS = 2**62`` ps (about 53
days either side of zero; a tagger's clock starts at 0, and a stream mapped
onto another tagger's clock may start slightly before it). The other half of
int64 is headroom: the counters subtract delays (up to 1 ms) and add the
coincidence horizon and histogram ranges to timestamps, and every such sum must
stay exact in int64. Tags, ``begin_ps`` and ``end_ps - 1`` outside the range
are refused with a :class:`TagBatchError` naming the value and its index
(never wrapped: a uint64 timestamp ``>= 2**63`` would otherwise turn negative).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numba
import numpy as np

from ._errors import ChannelError, TagBatchError, TagOrderError

MAX_CHANNELS = 256

MAX_TIMESTAMP_PS = 2**62
"""Largest ``|timestamp|`` accepted, ps; the rest of int64 is headroom for shifts."""


def _check_time_range(ts: np.ndarray) -> None:
    """Refuse timestamps outside ``[-MAX_TIMESTAMP_PS, MAX_TIMESTAMP_PS]`` before any cast."""
    if ts.size == 0:
        return
    if ts.dtype.kind == "u":
        over = ts > np.uint64(MAX_TIMESTAMP_PS)
    else:
        lo, hi = int(ts.min()), int(ts.max())
        if lo >= -MAX_TIMESTAMP_PS and hi <= MAX_TIMESTAMP_PS:
            return
        over = (ts < -MAX_TIMESTAMP_PS) | (ts > MAX_TIMESTAMP_PS)
    if over.any():
        bad = int(np.argmax(over))
        raise TagBatchError(
            f"timestamp {int(ts[bad])} ps at index {bad} is outside the representable range "
            f"+-{MAX_TIMESTAMP_PS} ps (2**62)"
        )


#: Timestamps checked per branch-free block of :func:`_first_decrease`.
_ORDER_BLOCK = 4096


@numba.njit(cache=True, nogil=True)
def _first_decrease(timestamps: np.ndarray) -> int:
    """Index of the first timestamp smaller than its predecessor, or -1.

    Blocks are scanned without an early exit, so the compiler vectorises the compare
    (an early-exit loop stays scalar: a fifth of the file counter's time); only a block
    that holds a decrease is walked again to name its index.
    """
    n = timestamps.shape[0]
    for start in range(1, n, _ORDER_BLOCK):
        stop = min(start + _ORDER_BLOCK, n)
        found = False
        for i in range(start, stop):
            found |= timestamps[i] < timestamps[i - 1]
        if found:
            for i in range(start, stop):
                if timestamps[i] < timestamps[i - 1]:
                    return i
    return -1


@dataclass(frozen=True, slots=True, eq=False)
class TagBatch:
    """Tags detected during ``[begin_ps, end_ps)``; validated on construction.

    Attributes:
        timestamps: int64 picoseconds, non-decreasing.
        channels: uint8 channel numbers, same length as ``timestamps``.
        begin_ps: start of the covered interval (inclusive), picoseconds.
        end_ps: end of the covered interval (exclusive), picoseconds.
    """

    timestamps: np.ndarray
    channels: np.ndarray
    begin_ps: int
    end_ps: int

    def __init__(
        self,
        timestamps: np.ndarray,
        channels: np.ndarray,
        begin_ps: int | None = None,
        end_ps: int | None = None,
    ) -> None:
        ts = np.ascontiguousarray(timestamps)
        ch = np.ascontiguousarray(channels)
        if ts.ndim != 1 or ch.ndim != 1:
            raise TagBatchError(
                f"timestamps and channels must be 1-D, got shapes {ts.shape} and {ch.shape}"
            )
        if ts.shape[0] != ch.shape[0]:
            raise TagBatchError(
                f"timestamps and channels differ in length: {ts.shape[0]} != {ch.shape[0]}"
            )
        if ts.dtype.kind not in "iu":
            raise TagBatchError(f"timestamps must be integer picoseconds, got dtype {ts.dtype}")
        if ch.dtype.kind not in "iu":
            raise TagBatchError(f"channels must be integers, got dtype {ch.dtype}")
        if ts.dtype.kind == "u":
            _check_time_range(ts)
        ts = ts.astype(np.int64, copy=False)
        if ch.size:
            lo, hi = int(ch.min()), int(ch.max())
            if lo < 0:
                bad = int(np.argmax(ch < 0))
                raise ChannelError(f"negative channel {int(ch[bad])} at index {bad}")
            if hi >= MAX_CHANNELS:
                bad = int(np.argmax(ch >= MAX_CHANNELS))
                raise ChannelError(
                    f"channel {int(ch[bad])} at index {bad} exceeds the maximum {MAX_CHANNELS - 1}"
                )
        ch = ch.astype(np.uint8, copy=False)
        bad = int(_first_decrease(ts))
        if bad >= 0:
            raise TagOrderError(
                f"timestamps decrease at index {bad}: {int(ts[bad - 1])} ps then "
                f"{int(ts[bad])} ps (use TagBatch.sorted() to sort an unordered stream)",
                bad,
            )
        if ts.size and (ts[0] < -MAX_TIMESTAMP_PS or ts[-1] > MAX_TIMESTAMP_PS):
            _check_time_range(ts)  # sorted: the ends decide, the scan names the index
        if begin_ps is None:
            begin_ps = int(ts[0]) if ts.size else 0
        if end_ps is None:
            end_ps = int(ts[-1]) + 1 if ts.size else int(begin_ps)
        begin_ps, end_ps = int(begin_ps), int(end_ps)
        if end_ps < begin_ps:
            raise TagBatchError(f"end_ps {end_ps} is before begin_ps {begin_ps}")
        if not -MAX_TIMESTAMP_PS <= begin_ps <= MAX_TIMESTAMP_PS + 1:
            raise TagBatchError(
                f"begin_ps {begin_ps} is outside the representable range +-{MAX_TIMESTAMP_PS} ps"
            )
        if not -MAX_TIMESTAMP_PS <= end_ps <= MAX_TIMESTAMP_PS + 1:
            raise TagBatchError(
                f"end_ps {end_ps} is outside the representable range "
                f"[-{MAX_TIMESTAMP_PS}, {MAX_TIMESTAMP_PS + 1}] ps"
            )
        if ts.size and (ts[0] < begin_ps or ts[-1] >= end_ps):
            raise TagBatchError(
                f"tags span [{int(ts[0])}, {int(ts[-1])}] ps, outside the batch interval "
                f"[{begin_ps}, {end_ps}) ps"
            )
        object.__setattr__(self, "timestamps", ts)
        object.__setattr__(self, "channels", ch)
        object.__setattr__(self, "begin_ps", begin_ps)
        object.__setattr__(self, "end_ps", end_ps)

    @classmethod
    def sorted(
        cls,
        timestamps: np.ndarray,
        channels: np.ndarray,
        begin_ps: int | None = None,
        end_ps: int | None = None,
    ) -> TagBatch:
        """Build a batch from tags in any order (stable sort by time)."""
        ts = np.asarray(timestamps)
        ch = np.asarray(channels)
        if ts.shape != ch.shape:
            raise TagBatchError(
                f"timestamps and channels differ in length: {ts.shape} != {ch.shape}"
            )
        order = np.argsort(ts, kind="stable")
        return cls(ts[order], ch[order], begin_ps, end_ps)

    @classmethod
    def empty(cls, begin_ps: int, end_ps: int) -> TagBatch:
        """A batch with no tags covering ``[begin_ps, end_ps)``."""
        return cls(np.empty(0, np.int64), np.empty(0, np.uint8), begin_ps, end_ps)

    def __len__(self) -> int:
        return int(self.timestamps.shape[0])

    @property
    def duration_ps(self) -> int:
        """Measured time covered by the batch, picoseconds."""
        return self.end_ps - self.begin_ps

    def check_channels(self, n_channels: int, where: str) -> None:
        """Raise ChannelError if any channel is ``>= n_channels``; ``where`` names the caller."""
        if self.channels.size and int(self.channels.max()) >= n_channels:
            bad = int(np.argmax(self.channels >= n_channels))
            raise ChannelError(
                f"{where}: channel {int(self.channels[bad])} at index {bad} is outside the "
                f"configured {n_channels} channels (0..{n_channels - 1})"
            )

    def split(self, cut_ps: int) -> tuple[TagBatch, TagBatch]:
        """Cut into ``[begin, cut)`` and ``[cut, end)``; tags at ``cut_ps`` go to the second."""
        if not self.begin_ps <= cut_ps <= self.end_ps:
            raise TagBatchError(
                f"cut {cut_ps} ps is outside the batch [{self.begin_ps}, {self.end_ps}) ps"
            )
        k = int(np.searchsorted(self.timestamps, cut_ps, side="left"))
        return (
            TagBatch(self.timestamps[:k], self.channels[:k], self.begin_ps, cut_ps),
            TagBatch(self.timestamps[k:], self.channels[k:], cut_ps, self.end_ps),
        )

    def split_at(self, cuts_ps: Iterable[int]) -> list[TagBatch]:
        """Cut at several times (sorted here; a repeated cut gives an empty batch).

        Returns ``len(cuts_ps) + 1`` contiguous batches, as :meth:`split` cuts them.
        """
        out: list[TagBatch] = []
        rest = self
        for cut in sorted(int(c) for c in cuts_ps):
            head, rest = rest.split(cut)
            out.append(head)
        out.append(rest)
        return out

    @staticmethod
    def concatenate(batches: list[TagBatch]) -> TagBatch:
        """Join contiguous batches (each one's begin equals the previous end) into one."""
        if not batches:
            raise TagBatchError("cannot concatenate an empty list of batches")
        for k in range(1, len(batches)):
            if batches[k].begin_ps != batches[k - 1].end_ps:
                raise TagBatchError(
                    f"batch {k} begins at {batches[k].begin_ps} ps but batch {k - 1} "
                    f"ends at {batches[k - 1].end_ps} ps: batches must be contiguous"
                )
        return TagBatch(
            np.concatenate([b.timestamps for b in batches]),
            np.concatenate([b.channels for b in batches]),
            batches[0].begin_ps,
            batches[-1].end_ps,
        )
