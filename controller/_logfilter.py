"""One mechanism against log spam: repeated lines are collapsed per logger and period.

With the instruments down the supervisor would log one line per device every retry, and
a command flood one "pending publish calls" line per command. :class:`RepeatFilter`
lets the first line of a kind through, drops the ones like it for ``period_s`` and, at
the first one after that, logs it with "(repeated N times in the last T s)". Two lines
are alike when logger, level and text match once numbers are ignored (so
"3 pending publish calls" and "4 pending publish calls" are alike, while
"pump_laser faulted" and "snspd_bias faulted" are not). Installed on the handlers by
:func:`install_repeat_filter` wherever a qnet process configures logging.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

#: Numbers not glued to a name (``tagger2`` keeps its 2): ignored when comparing lines.
_NUMBER = re.compile(r"(?<![A-Za-z_\d.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
#: Kinds of lines remembered at most (oldest forgotten first).
MAX_KINDS = 4096


class RepeatFilter(logging.Filter):
    """Collapse lines alike (see the module docstring) within ``period_s`` seconds."""

    def __init__(self, period_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.period_s = period_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, int, str], list[float | int]] = {}  # key -> [since, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        """True to log the record (maybe with its repeat count), False to drop it."""
        try:
            text = record.getMessage()
        except Exception:
            return True  # a broken record is logging's problem, not ours
        key = (record.name, record.levelno, _NUMBER.sub("#", text))
        now = float(self._clock())
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.period_s:
                seen[1] += 1
                return False
            dropped = int(seen[1]) if seen is not None else 0
            since = seen[0] if seen is not None else now
            self._seen.pop(key, None)
            self._seen[key] = [now, 0]
            if len(self._seen) > MAX_KINDS:
                self._seen.pop(next(iter(self._seen)))
        if dropped:
            record.msg = f"{text} (repeated {dropped} times in the last {now - since:.0f} s)"
            record.args = None
        return True


def install_repeat_filter(
    period_s: float = 60.0, handlers: list[logging.Handler] | None = None
) -> None:
    """Give each of ``handlers`` (default: the root logger's) its own :class:`RepeatFilter`.

    One instance per handler: a filter shared by two handlers would count the same
    record twice and drop it from the second.
    """
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(RepeatFilter(period_s))
