"""Broker lost / back, said once each: the daemon's view of its MQTT connection.

The publisher and the command listener each log every reconnection attempt; with
the broker down for hours that is a warning every few seconds. :func:`watch_broker`
logs "unreachable" once (with how it retries) and "back" once, and while it runs
:class:`BrokerQuiet` holds back the per-retry warnings (a broker setup error, such as
a missing password file, is an ERROR and still shows; the outbox depth in the
telemetry shows the backlog).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("qnet.daemon")

#: Time the publisher gets for its first connection before "unreachable" is logged, s.
BROKER_GRACE_S = 2.0


class BrokerQuiet(logging.Filter):
    """Drops the per-retry "broker ... retry in" / "command listener: ... retry in" warnings."""

    LOGGERS = ("qnet.telemetry.publisher", "qnet.daemon", "qnet.commands")

    def __init__(self) -> None:
        super().__init__()
        self.attached = False

    def attach(self) -> None:
        """Start holding back the retry warnings."""
        if not self.attached:
            for name in self.LOGGERS:
                logging.getLogger(name).addFilter(self)
            self.attached = True

    def detach(self) -> None:
        """Let them through again."""
        if self.attached:
            for name in self.LOGGERS:
                logging.getLogger(name).removeFilter(self)
            self.attached = False

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a retry warning (held back), True for anything else."""
        if record.levelno != logging.WARNING:
            return True
        msg = str(record.msg)
        return not (msg.startswith(("broker ", "command listener: ")) and "retry in" in msg)


async def watch_broker(
    broker: Any,
    connected: Callable[[], bool],
    outbox_depth: Callable[[], int],
    event: Callable[[str, str, str | None], None],
    quiet: BrokerQuiet,
) -> None:
    """Log the broker lost / back once each until cancelled (polls ``connected`` every 0.5 s)."""
    down_since: float | None = None
    quiet.attach()  # from the start: this watcher reports every change of state itself
    try:
        await asyncio.sleep(BROKER_GRACE_S)  # the first connection attempt
        while True:
            up = connected()
            if not up and down_since is None:
                down_since = time.monotonic()
                quiet.attach()
                log.warning(
                    "broker %s:%d unreachable: telemetry is kept in the outbox and commands "
                    "are not answered until it is back; retrying every %g to %g s, quietly",
                    broker.host,
                    broker.port,
                    broker.reconnect_min_s,
                    broker.reconnect_max_s,
                )
                event("mqtt", "broker unreachable", None)
            elif up and down_since is not None:
                quiet.detach()
                log.info(
                    "broker %s:%d back after %.0f s; %d telemetry records still to send",
                    broker.host,
                    broker.port,
                    time.monotonic() - down_since,
                    outbox_depth(),
                )
                event("mqtt", "broker back", None)
                down_since = None
            await asyncio.sleep(0.5)
    finally:
        quiet.detach()
