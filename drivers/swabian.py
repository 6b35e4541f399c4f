"""Thin TagSource adapter over Swabian Instruments' ``TimeTagger`` Python SDK, if installed.

Uses the SDK's documented ``createTimeTagger`` and ``TimeTagStream``
measurement (``getData()`` returning a buffer with ``getTimestamps()``,
``getChannels()``, ``tStart`` and ``tGetData``). Importing this module never
fails; constructing :class:`SwabianTagSource` without the SDK raises
ImportError naming the package.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from coincidence import TagBatch

from ._tagsource import TagSource


class SwabianTagSource(TagSource):
    """TagSource over a Swabian Time Tagger; SDK channel ``channels[k]`` becomes channel ``k``.

    Args:
        channels: SDK channel numbers to stream (e.g. ``[1, 2, 3, 4]``).
        serial: device serial ("" = first found).
        buffer_size: maximum tags buffered by the SDK between reads.
        tagger: an already created SDK tagger (tests, or sharing one device).
    """

    def __init__(
        self,
        channels: list[int],
        serial: str = "",
        buffer_size: int = 10_000_000,
        tagger: Any = None,
    ) -> None:
        try:
            import TimeTagger
        except ImportError as exc:
            raise ImportError("SwabianTagSource needs Swabian's TimeTagger SDK") from exc
        self._sdk = TimeTagger
        self._own = tagger is None
        self._tagger = tagger if tagger is not None else TimeTagger.createTimeTagger(serial)
        self._channels = list(channels)
        lut = np.full(max(abs(c) for c in channels) * 2 + 2, 255, np.uint8)
        for k, c in enumerate(self._channels):
            lut[c] = k
        self._lut = lut
        self._stream = TimeTagger.TimeTagStream(self._tagger, buffer_size, self._channels)
        self._stream.start()

    @property
    def n_channels(self) -> int:
        """Number of streamed channels."""
        return len(self._channels)

    def read(self, timeout_s: float = 1.0) -> TagBatch | None:
        """Tags gathered since the last read (waits ``timeout_s`` at most)."""
        time.sleep(min(timeout_s, 0.05))
        buf = self._stream.getData()
        ts = np.asarray(buf.getTimestamps(), dtype=np.int64)
        ch = self._lut[np.asarray(buf.getChannels())]
        return TagBatch.sorted(ts, ch, int(buf.tStart), int(buf.tGetData))

    def close(self) -> None:
        """Stop the stream and free the device if this adapter created it."""
        if self._stream is not None:
            self._stream.stop()
            self._stream = None
            if self._own:
                self._sdk.freeTimeTagger(self._tagger)
