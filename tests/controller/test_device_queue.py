"""A device's call queue: polls before commands, timeouts on I/O only, a bounded backlog."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from controller.supervisor import (
    PRIORITY_COMMAND,
    PRIORITY_POLL,
    PRIORITY_SYSTEM,
    DeviceBusy,
    DeviceWorker,
)


class _Slow:
    """An instrument whose every call takes ``delay_s`` and is recorded in order."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def op(self, name: str) -> str:
        time.sleep(self.delay_s)
        with self.lock:
            self.calls.append(name)
        return name


def _worker(inst: _Slow, **kw: Any) -> DeviceWorker:
    w = DeviceWorker("dev", inst, **kw)
    w.state = "ready"
    return w


def test_queue_waiting_is_not_a_device_timeout():
    """20 commands of 0.1 s each, call timeout 0.5 s: the last waits ~2 s, none times out."""
    inst = _Slow(0.1)
    w = _worker(inst, call_timeout_s=0.5, max_queue=100)

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(w.call(lambda i, k=k: i.op(f"c{k}")) for k in range(20)), return_exceptions=True
        )

    results = asyncio.run(main())
    assert results == [f"c{k}" for k in range(20)]
    assert w.state == "ready" and w.errors == 0
    w.executor.shutdown()


def test_a_hung_call_still_times_out_and_faults():
    inst = _Slow(1.0)
    w = _worker(inst, call_timeout_s=0.2)

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await w.call(lambda i: i.op("hung"))

    asyncio.run(main())
    assert w.state == "faulted" and "timed out" in w.last_error
    w.executor.shutdown()


def test_polls_and_system_actions_go_before_waiting_commands():
    inst = _Slow(0.05)
    w = _worker(inst, call_timeout_s=5.0, max_queue=100)

    async def main() -> None:
        cmds = [
            asyncio.create_task(w.call(lambda i, k=k: i.op(f"cmd{k}"), priority=PRIORITY_COMMAND))
            for k in range(10)
        ]
        await asyncio.sleep(0.01)  # cmd0 runs, the rest wait
        system = asyncio.create_task(w.call(lambda i: i.op("safe"), priority=PRIORITY_SYSTEM))
        poll = asyncio.create_task(w.call(lambda i: i.op("poll"), priority=PRIORITY_POLL))
        await asyncio.gather(*cmds, system, poll)

    asyncio.run(main())
    assert inst.calls[:3] == ["cmd0", "poll", "safe"], inst.calls
    w.executor.shutdown()


def test_commands_beyond_the_queue_bound_are_refused_busy_but_polls_are_not():
    inst = _Slow(0.05)
    w = _worker(inst, call_timeout_s=5.0, max_queue=3)

    async def main() -> list[Any]:
        tasks = [
            asyncio.create_task(w.call(lambda i, k=k: i.op(f"c{k}"))) for k in range(6)
        ]  # 1 runs, 3 wait, 2 refused
        await asyncio.sleep(0.01)
        poll = asyncio.create_task(w.call(lambda i: i.op("poll"), priority=PRIORITY_POLL))
        return await asyncio.gather(*tasks, poll, return_exceptions=True)

    results = asyncio.run(main())
    busy = [r for r in results if isinstance(r, DeviceBusy)]
    assert len(busy) == 2 and "max_queue 3" in str(busy[0]), results
    assert results[-1] == "poll"
    assert w.refused_busy == 2 and w.queued_commands == 0
    w.executor.shutdown()


def test_a_cancelled_waiter_does_not_block_the_queue():
    inst = _Slow(0.05)
    w = _worker(inst, call_timeout_s=5.0)

    async def main() -> str:
        first = asyncio.create_task(w.call(lambda i: i.op("a")))
        waiting = asyncio.create_task(w.call(lambda i: i.op("b")))
        await asyncio.sleep(0.01)
        waiting.cancel()
        await first
        return await asyncio.wait_for(w.call(lambda i: i.op("c")), 2.0)

    assert asyncio.run(main()) == "c"
    assert inst.calls == ["a", "c"]
    w.executor.shutdown()
