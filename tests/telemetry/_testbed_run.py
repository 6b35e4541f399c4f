"""Telemetry of a short run of the emulated testbed, made by the daemon's own code.

:func:`run_testbed` serves the emulated instruments on free ports (``make_sim_node``), runs
:class:`controller.daemon.Daemon` in-process on the testbed's in-process tag source faster
than real time, latches an SNSPD once (the ``snspd_latch`` interlock trips, resets the
detector and clears), shuts the daemon down and returns the line protocol the daemon stored
in its telemetry outbox. The broker named in the config is a free port nobody listens on, so
every record the daemon submitted stays in the outbox, exactly as it would be published.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from controller._daemon_config import load_daemon_config
from controller.daemon import Daemon
from controller.simnode import CONFIGS, free_port, make_sim_node
from telemetry._outbox import Outbox


def _daemon_changes(speed: float):
    def change(raw):
        d = raw["daemon"]
        d["acquisition"]["source"] = {
            "kind": "testbed",
            "config": str(CONFIGS / "testbed.yaml"),
            "speed": speed,
            "serve": False,
        }
        # the SPAD's temperature and gate state too (the SNSPD's SMU has no thermometer)
        d["monitor"]["spad"] = ["temperature_c", "running"]
        d["calibration"]["track"] = False
        d["shutdown_timeout_s"] = 2.0

    return change


def run_testbed(
    workdir: Path, windows: int = 15, speed: float = 4.0, timeout_s: float = 60.0
) -> tuple[list[str], int, int]:
    """(line protocol lines, first ns, last ns) of a daemon run on the emulated testbed."""
    tb, cfg_path = make_sim_node(
        workdir,
        broker=("127.0.0.1", free_port()),
        daemon_changes=_daemon_changes(speed),
    )
    cfg = load_daemon_config(cfg_path)
    tb.serve()
    try:
        asyncio.run(_run(cfg, tb, windows, timeout_s))
    finally:
        tb.stop()
    outbox = Outbox(workdir / "outbox.sqlite")
    try:
        lines = [line for _, _, line in outbox.peek(10**7)]
    finally:
        outbox.close()
    stamps = [int(line.rsplit(" ", 1)[1]) for line in lines]
    return lines, min(stamps), max(stamps)


async def _run(cfg, tb, windows: int, timeout_s: float) -> None:
    d = Daemon(cfg, testbed=tb)
    await d.start()
    deadline = time.monotonic() + timeout_s

    async def until(cond, what):
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"testbed run: timed out waiting for {what}: {d.status()}")
            await asyncio.sleep(0.1)

    def interlock(text):
        return any(e["kind"] == "interlock" and text in e["text"] for e in d.events)

    try:
        await until(lambda: d.calibration.get("state") == "done", "the calibration")
        await until(lambda: d.acquisition.windows >= windows // 2, f"{windows // 2} windows")
        smu = tb.emulators["snspd_bias"]
        with smu.lock:
            smu.latched = True
        await until(lambda: interlock("snspd_latch clear"), "the SNSPD latch trip and clear")
        assert interlock("snspd_latch trip")
        await until(lambda: d.acquisition.windows >= windows, f"{windows} windows")
    finally:
        await d.shutdown()
