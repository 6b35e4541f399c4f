"""The main job on a fresh machine: the emulated node end to end, watched live.

``run_demo`` starts, all in this process and on free loopback ports:

1. the emulated testbed (``configs/testbed.yaml``) serving every instrument;
2. an embedded MQTT broker (amqtt, pure Python) unless ``--broker`` names one;
3. the daemon (``configs/sim-daemon.yaml`` re-addressed to those ports);
4. the live status view (the same as ``qnet status``, fetched over MQTT).

The daemon finds the delays (QBER and key rate climb from nothing), then at
``--drift-at`` seconds (default: 35 % of the run) the demo rotates Bob's fiber
polarization: the QBER interlock pauses the key and the compensation drives the polarization
controller until the QBER is back below target. After ``--duration`` seconds
the daemon shuts down (safe state, outbox flushed) and the run folder
``runs/demo-<UTC stamp>/`` gets ``summary.json``, ``histogram.png`` (Alice H /
Bob H coincidence histogram at the found delay) and ``qber_keyrate.png``.
Exit 0 when the link calibrated, compensated the drift and ended with a
QBER below the interlock threshold; 1 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from ._cli_options import parse_host_port

log = logging.getLogger("qnet.demo")


async def _start_amqtt(port: int) -> Any:
    """An embedded amqtt broker on 127.0.0.1:``port`` (anonymous, loopback only)."""
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "auth": {"allow-anonymous": True},
        "topic-check": {"enabled": False},
        "sys_interval": 0,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        broker = Broker(config)
        await broker.start()
    return broker


def _plots(out: Path, history: list[dict[str, Any]], hist: Any, drift_wall: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if hist is not None:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.step(hist.bin_centers_ps, hist.counts, where="mid")
        ax.set_xlabel("t(Bob H) - t(Alice H) - delay  [ps]")
        ax.set_ylabel("coincidences per bin")
        ax.set_title(f"coincidence histogram at the found delay ({hist.delay_ps} ps)")
        fig.tight_layout()
        fig.savefig(out / "histogram.png", dpi=120)
        plt.close(fig)
    if history:
        t0 = history[0]["time_s"]
        t = [h["time_s"] - t0 for h in history]

        def col(key: str) -> list[float]:
            return [math.nan if h.get(key) is None else float(h[key]) for h in history]

        fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
        a1.plot(t, [100 * v for v in col("qber_z")], label="QBER Z")
        a1.plot(t, [100 * v for v in col("qber_x")], label="QBER X")
        a1.set_ylabel("QBER [%]")
        a1.set_ylim(0, 30)
        a1.legend()
        a2.plot(t, col("secure_rate_bps"), label="secure key rate")
        a2.plot(t, col("sifted_rate_hz"), label="sifted rate", alpha=0.6)
        a2.set_ylabel("bit/s")
        a2.set_xlabel("time [s]")
        a2.legend()
        if drift_wall is not None:
            for a in (a1, a2):
                a.axvline(drift_wall - t0, color="red", ls="--", lw=1)
            a1.annotate("polarization drift", (drift_wall - t0, 25), color="red")
        fig.tight_layout()
        fig.savefig(out / "qber_keyrate.png", dpi=120)
        plt.close(fig)


async def run_demo(
    duration_s: float = 60.0,
    drift_at_s: float | None = None,
    broker: tuple[str, int] | None = None,
    runs_dir: Path = Path("runs"),
    live: bool = True,
) -> tuple[int, Path, dict[str, Any]]:
    """Run the demo (see the module docstring); returns (exit code, run folder, summary)."""
    from rich.console import Console
    from rich.live import Live

    from coincidence import CorrelationHistogram
    from drivers.sim import physics as ph
    from telemetry import BrokerSettings

    from ._daemon_config import load_daemon_config
    from ._remote import RemoteError, client_id, request
    from ._runs import new_run_dir
    from .daemon import Daemon
    from .simnode import free_port, make_sim_node
    from .status_view import render

    out = new_run_dir(runs_dir, "demo")
    amqtt_broker = None
    if broker is None:
        port = free_port()
        amqtt_broker = await _start_amqtt(port)
        broker = ("127.0.0.1", port)
    testbed, cfg_path = make_sim_node(out / "node", broker=broker)
    cfg = load_daemon_config(cfg_path)
    qber_trip = (
        cfg.daemon.interlocks["qber"].trip_above if "qber" in cfg.daemon.interlocks else 0.06
    )
    testbed.serve()
    daemon = Daemon(cfg)
    console = Console()
    drift_at = duration_s * 0.35 if drift_at_s is None else drift_at_s
    drift_wall: float | None = None
    hist = None
    status: dict[str, Any] = {}
    settings = BrokerSettings(host=broker[0], port=broker[1], client_id=client_id())
    t_start = time.monotonic()
    try:
        await daemon.start()
        ctx = Live(console=console, refresh_per_second=4) if live else contextlib.nullcontext()
        with ctx as view:
            last_print = -1
            while (elapsed := time.monotonic() - t_start) < duration_s:
                if drift_wall is None and elapsed >= drift_at:
                    testbed.impose_rotation((0.0, 1.0, 0.6))
                    drift_wall = time.time()
                    daemon._event("demo", "polarization drift imposed on Bob's fiber", None)
                try:
                    reply = await request(
                        settings, cfg.node, {"device": "daemon", "action": "status"}, 5
                    )
                    status = reply.get("result") or status
                except RemoteError as exc:
                    status = daemon.status()  # broker hiccup: show the local view
                    log.warning("status over MQTT failed: %s", exc)
                title = f"qnet demo - {elapsed:4.0f} / {duration_s:.0f} s"
                if view is not None:
                    view.update(render(status, title))
                elif int(elapsed) // 5 != last_print:
                    last_print = int(elapsed) // 5
                    lw = status.get("last_window") or {}
                    cal = status.get("calibration", {}).get("state")
                    console.print(
                        f"{elapsed:5.1f} s  calibration={cal}"
                        f"  QBER={lw.get('qber')}  key={lw.get('secure_rate_bps')} bit/s"
                        f"  paused={status.get('key_paused')}"
                        f"  compensation={status.get('compensation', {}).get('state')}"
                    )
                await asyncio.sleep(0.5)
        # the coincidence histogram at the found delay, from a last capture
        if daemon.windower is not None and daemon.acquisition is not None:
            with contextlib.suppress(Exception):
                batch = await daemon._capture(1.0)
                d = daemon.windower.delays_ps
                h = CorrelationHistogram(0, 4, 20, 2000, int(d[4] - d[0]))
                h.process(batch)
                hist = h.result()
        status = daemon.status()
    finally:
        shutdown = await daemon.shutdown()
        testbed.stop()
        if amqtt_broker is not None:
            with contextlib.suppress(Exception):
                await amqtt_broker.shutdown()
    history = list(daemon.history)
    truth = ph.channel_delays_ps(testbed.params)
    truth = truth - truth[0]
    found = status.get("delays_ps") or []
    before = [h["qber"] for h in history if drift_wall and h["time_s"] < drift_wall and h["qber"]]
    final = [h["qber"] for h in history[-5:] if h.get("qber") is not None]
    keys = [h["secure_rate_bps"] for h in history[-5:]]
    summary = {
        "run": str(out),
        "duration_s": duration_s,
        "windows": status.get("windows"),
        "calibration": status.get("calibration", {}).get("state"),
        "delays_ps_found": found,
        "delays_ps_true": [int(x) for x in truth],
        "qber_before_drift": before[-1] if before else None,
        "drift_imposed_at_s": None if drift_wall is None else drift_at,
        "compensation": status.get("compensation"),
        "final_qber": float(sum(final) / len(final)) if final else None,
        "final_secure_rate_bps": float(sum(keys) / len(keys)) if keys else None,
        "interlock_events": [
            e["text"] for e in status.get("events", []) if e["kind"] == "interlock"
        ],
        "shutdown": shutdown,
        "broker": "embedded amqtt" if amqtt_broker is not None else f"{broker[0]}:{broker[1]}",
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "history.json").write_text(json.dumps(history, default=str))
    _plots(out, history, hist, drift_wall)
    ok = (
        summary["calibration"] == "done"
        and summary["final_qber"] is not None
        and summary["final_qber"] < qber_trip
        and (drift_wall is None or (summary["compensation"] or {}).get("state") == "converged")
    )
    return (0 if ok else 1), out, summary


def demo(
    duration: Annotated[float, typer.Option(help="seconds to run")] = 60.0,
    drift_at: Annotated[
        float | None, typer.Option(help="second at which Bob's polarization is rotated")
    ] = None,
    broker: Annotated[
        str | None, typer.Option(help="HOST:PORT of a broker (default: embedded amqtt)")
    ] = None,
    runs: Annotated[Path, typer.Option(help="folder for the run output")] = Path("runs"),
    live: Annotated[
        bool, typer.Option(help="live status view when on a terminal (off: a line every 5 s)")
    ] = True,
    link: Annotated[bool, typer.Option("--link", help="the two-site QKD link demo")] = False,
    keep_serving: Annotated[
        bool, typer.Option("--keep-serving", help="--link: keep both KMEs up until Ctrl-C")
    ] = False,
) -> None:
    """Run the emulated node end to end and watch it live; summary and plots in runs/demo-<stamp>/.

    Starts the emulated testbed, an embedded MQTT broker (unless --broker) and the
    daemon; the delays are found, a polarization drift is imposed at --drift-at
    (default: 35 % of --duration) and compensated. Exit 0 when the link ends
    calibrated with QBER below the interlock threshold, 1 otherwise, 2 for bad options.
    """
    import sys

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    live = live and sys.stdout.isatty()
    if duration <= 5:
        raise typer.BadParameter("--duration must be more than 5 s")
    if link or keep_serving:  # the two-site demo: controller/demo_link.py
        from .demo_link import main as link_demo

        raise typer.Exit(link_demo(duration, runs, keep_serving, link))
    addr = parse_host_port(broker) if broker else None
    code, out, summary = asyncio.run(run_demo(duration, drift_at, addr, runs, live))
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "shutdown"}, indent=2))
    typer.echo(f"run folder: {out} (summary.json, histogram.png, qber_keyrate.png)")
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``qnet demo`` (the full demo) to the app."""
    app.command("demo")(demo)


if __name__ == "__main__":
    typer.run(demo)
