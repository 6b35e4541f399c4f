"""A TagSource that replays a list of batches, and random batches to feed it, for merger tests."""

import numpy as np

from coincidence import TagBatch
from drivers import TagSource


def random_batches(rng, begin, ends, rate):
    """Contiguous batches from ``begin`` to each of ``ends`` (ps), Poisson tags at ``rate``/ps
    on channels 0-3."""
    out, t = [], begin
    for e in ends:
        n = rng.poisson((e - t) * rate)
        ts = np.sort(rng.integers(t, e, n))
        out.append(TagBatch(ts, rng.integers(0, 4, n).astype(np.uint8), t, e))
        t = e
    return out


class ListSource(TagSource):
    def __init__(self, batches, n=4):
        self.batches = list(batches)
        self.n = n
        self.closed = False

    @property
    def n_channels(self):
        return self.n

    def read(self, timeout_s=1.0):
        return self.batches.pop(0) if self.batches else None

    def close(self):
        self.closed = True
