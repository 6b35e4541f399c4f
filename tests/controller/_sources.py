"""A TagSource that replays a list of batches, for merger and acquisition tests."""

from drivers import TagSource


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
