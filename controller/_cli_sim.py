"""``qnet sim CONFIG``: serve the emulated entanglement-distribution testbed until stopped."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer


def sim(
    config: Annotated[
        Path, typer.Argument(help="testbed YAML (e.g. configs/testbed.yaml)", show_default=False)
    ],
    speed: Annotated[
        float | None,
        typer.Option(
            "--speed",
            help="simulated seconds per wall-clock second of the served tag streams and "
            "the physics clock (default: the config's speed; 0 means 1 here)",
            min=0.0,
        ),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option("--duration", help="stop after this many wall-clock seconds", min=0.0),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="override the config's random seed")
    ] = None,
    site: Annotated[
        str | None,
        typer.Option(
            "--site",
            help="serve one site of a two-site testbed: 'alice' (the source, the physics and "
            "Alice's instruments) or 'bob' (Bob's instruments and tagger, fed by the alice "
            "process over the config's site_link)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve every instrument of the emulated node on loopback, with physics behind them.

    Each SCPI instrument listens on its TCPIP::127.0.0.1::PORT::SOCKET address and
    each serial one on its socket://127.0.0.1:PORT URL (from the node config the
    testbed config names); the time taggers stream tags from the physics model.
    Runs until Ctrl-C, SIGTERM or --duration, then closes every socket. With
    --site, only that site's instruments (one process per site, e.g.
    configs/testbed-link.yaml).
    """
    from rich.console import Console
    from rich.table import Table

    from controller._cli_options import fail, fail_text
    from drivers.sim.testbed import Testbed, TestbedConfig, TestbedError

    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        cfg = TestbedConfig.load(config)
        changes: dict[str, object] = {}
        if speed is not None:
            changes["speed"] = speed
        if seed is not None:
            changes["seed"] = seed
        if changes:
            cfg = cfg.model_copy(update=changes)
        testbed = Testbed(cfg)
    except TestbedError as exc:
        fail_text("sim", str(exc), config)
    if not cfg.instruments:
        fail("sim", "no instruments to serve (set node_config)", str(config))
    if site is not None and site not in ("alice", "bob"):
        fail("sim", f"--site must be 'alice' or 'bob', got {site!r}", str(config))
    try:
        served = testbed.serve() if site is None else testbed.serve_site(site)  # type: ignore[arg-type]
    except OSError as exc:
        fail("sim", f"cannot serve the testbed: {exc}", str(config), code=1)
    except TestbedError as exc:
        fail_text("sim", str(exc), config)

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # SIGINT too gets this handler: started in the background (nohup, ``&`` in a script)
    # the process inherits SIGINT ignored and Python then raises no KeyboardInterrupt.
    old = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        clock_speed = testbed.clock_speed
        if site != "bob":  # the Bob-site process has no physics of its own
            testbed.start_clock(clock_speed)
        where = f", site {site}" if site else ""
        table = Table(title=f"qnet sim: {config} (seed {cfg.seed}, speed {clock_speed:g}x{where})")
        for col in ("instrument", "driver", "address", "stream", "fault", "channels"):
            table.add_column(col)
        for name, address in served.items():
            spec = cfg.instruments[name]
            server = testbed.servers[name]
            table.add_row(
                name,
                spec.driver,
                address,
                f"tcp://127.0.0.1:{server.stream_port}" if server.stream_port else "",
                cfg.faults.get(name, ""),
                ",".join(str(c) for c in spec.channels),
            )
        console.print(table)
        if site == "bob":
            console.print(
                f"site bob: Bob's photons come from the alice process at {cfg.site_link}; "
                "channels Bob H,V,D,A = 0-3 of bob_tagger. Ctrl-C to stop."
            )
        else:
            exp = testbed.expected_rates()
            if site == "alice":
                console.print(f"site alice: serving Bob's photons at {cfg.site_link}.")
            console.print(
                f"pump {testbed.pump_power_w() * 1e3:.2f} mW, pairs {exp['pair_rate_hz']:.3g}/s, "
                f"clocks {cfg.physics.clocks.mode}; channels Alice H,V,D,A = 0-3, Bob = 4-7. "
                "Ctrl-C to stop."
            )
        t_end = None if duration is None else time.monotonic() + duration
        while not stop.is_set():
            wait = 0.2 if t_end is None else min(0.2, max(0.0, t_end - time.monotonic()))
            if stop.wait(wait) or (t_end is not None and time.monotonic() >= t_end):
                break
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        testbed.stop()
    if site == "bob":
        console.print("stopped")
    else:
        console.print(f"stopped at simulated t = {testbed.sim_time_ps * 1e-12:.3f} s")


def register(app: typer.Typer) -> None:
    """Add ``qnet sim`` to the command line."""
    app.command("sim")(sim)
