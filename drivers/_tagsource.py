"""The TagSource seam: where time tags enter qnet.

A real time tagger's driver, the emulated testbed and file replay all
implement it, so acquisition code never knows which one it reads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType

from coincidence import TagBatch


class TagSource(ABC):
    """A stream of contiguous TagBatches (each ``begin_ps`` equals the previous ``end_ps``)."""

    @property
    @abstractmethod
    def n_channels(self) -> int:
        """Number of input channels; every tag's channel is below it."""

    @abstractmethod
    def read(self, timeout_s: float = 1.0) -> TagBatch | None:
        """Next batch of tags, waiting at most ``timeout_s``; None once the stream has ended.

        A source with nothing new within the timeout returns an empty batch that
        still covers the elapsed measured time, so quiet time counts; one that cannot
        vouch for any time (nothing measured yet) returns a zero-length empty batch,
        which consumers skip: it neither starts nor advances anything. A batch that
        does not begin where the previous one ended marks a gap (time not measured).
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the source's resources; idempotent."""

    def __enter__(self) -> TagSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
