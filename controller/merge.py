"""Several time taggers as one TagSource: channels remapped, streams merged in time order.

Each tagger's channel ``k`` becomes ``channel_offset + k``. The merged stream
advances only as far as *every* tagger has reported (the smallest ``end_ps``),
so no tag arrives late; the first batch starts where the last tagger started.
The taggers share a time base (one reference clock, as in the emulated
testbed's ``shared`` mode), or an independently clocked tagger gets a linear
clock map (``set_clock_map``: offset and ppm drift, a ``ClockDrift`` fitted by
the calibration) that puts its times onto the first tagger's clock before merging.
"""

from __future__ import annotations

import time

import numpy as np

from coincidence import ClockDrift, TagBatch
from drivers import TagSource


class MergedTagSource(TagSource):
    """Merge ``sources`` (channel ``k`` of source ``i`` -> ``offsets[i] + k``).

    ``clock_offsets_ps[i]`` (default 0) is subtracted from source ``i``'s times
    (its clock minus the reference clock), e.g. a known offset between two taggers.
    A clock map set with ``set_clock_map`` is applied after that offset.
    """

    def __init__(
        self,
        sources: list[TagSource],
        offsets: list[int],
        n_channels: int,
        clock_offsets_ps: list[int] | None = None,
    ) -> None:
        if len(sources) != len(offsets) or not sources:
            raise ValueError("need one channel offset per source, and at least one source")
        clocks = [0] * len(sources) if clock_offsets_ps is None else list(clock_offsets_ps)
        if len(clocks) != len(sources):
            raise ValueError("need one clock offset per source")
        for s, off in zip(sources, offsets, strict=True):
            if off < 0 or off + s.n_channels > n_channels:
                raise ValueError(
                    f"channels {off}..{off + s.n_channels - 1} do not fit in {n_channels} channels"
                )
        self._sources = sources
        self._offsets = [int(o) for o in offsets]
        self._clocks = [int(c) for c in clocks]
        self._maps: list[ClockDrift | None] = [None] * len(sources)
        self._n = int(n_channels)
        self._pending: list[list[TagBatch]] = [[] for _ in sources]
        self._t: int | None = None

    @property
    def n_channels(self) -> int:
        """Channels of the merged stream."""
        return self._n

    def set_clock_map(self, index: int, fit: ClockDrift | None) -> None:
        """Map source ``index``'s times onto the reference clock with ``fit`` (None: no map).

        Takes effect from the next batch read from that source; tags that the new
        map puts before what was already merged are dropped (the stream stays ordered).
        """
        if not 0 <= index < len(self._sources):
            raise ValueError(f"no source {index}: have {len(self._sources)} sources")
        self._maps[index] = fit

    def clock_map(self, index: int) -> ClockDrift | None:
        """The clock map of source ``index`` (None when none is set)."""
        return self._maps[index]

    def _end(self, i: int) -> int | None:
        return self._pending[i][-1].end_ps if self._pending[i] else None

    def read(self, timeout_s: float = 1.0) -> TagBatch | None:
        """Tags up to the point every source has reported, within ``timeout_s``.

        On a timeout: a zero-length empty batch at the merged time so far (before any
        source has reported, ``TagBatch.empty(0, 0)``), which covers no measured time.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            ends = [self._end(i) for i in range(len(self._sources))]
            if self._t is None and all(e is not None for e in ends):
                self._t = max(p[0].begin_ps for p in self._pending)
            if self._t is not None and all(e is not None and e > self._t for e in ends):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                t = self._t if self._t is not None else 0
                return TagBatch.empty(t, t)  # no measured time: not a window of zeros
            # read from the source that is furthest behind (or has nothing yet)
            i = min(
                range(len(self._sources)),
                key=lambda k: -(2**62) if ends[k] is None else ends[k],  # type: ignore[return-value]
            )
            batch = self._sources[i].read(left)
            if batch is None:
                return None
            if batch.duration_ps == 0 and not len(batch):
                continue
            ch = batch.channels
            if self._offsets[i]:
                ch = (ch.astype(np.int64) + self._offsets[i]).astype(np.uint8)
            c = self._clocks[i]
            ts, begin, end = batch.timestamps - c, batch.begin_ps - c, batch.end_ps - c
            fit = self._maps[i]
            if fit is not None:
                ts = fit.to_clock_a(ts)
                begin, end = (int(x) for x in fit.to_clock_a(np.array([begin, end])))
                if ts.size and ts[-1] >= end:  # rounding at the edge
                    keep = ts < end
                    ts, ch = ts[keep], ch[keep]
            prev = self._pending[i][-1].end_ps if self._pending[i] else self._t
            if prev is not None and begin != prev:
                if end <= prev:
                    continue  # a map change moved this whole batch into merged time
                begin = prev
                if ts.size and ts[0] < begin:
                    keep = ts >= begin
                    ts, ch = ts[keep], ch[keep]
            batch = TagBatch(ts, ch, begin, end)
            self._pending[i].append(batch)
        assert self._t is not None
        cut = min(int(p[-1].end_ps) for p in self._pending)
        heads = []
        for i, parts in enumerate(self._pending):
            whole = parts[0] if len(parts) == 1 else TagBatch.concatenate(parts)
            if whole.begin_ps < self._t:
                whole = whole.split(min(self._t, whole.end_ps))[1]
            head, tail = whole.split(cut)
            heads.append(head)
            self._pending[i] = [tail] if tail.duration_ps > 0 else []
        ts = np.concatenate([h.timestamps for h in heads])
        ch = np.concatenate([h.channels for h in heads])
        begin, self._t = self._t, cut
        return TagBatch.sorted(ts, ch, begin, cut)

    def close(self) -> None:
        """Close every source."""
        for s in self._sources:
            s.close()
