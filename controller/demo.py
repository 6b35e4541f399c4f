"""The main job on a fresh machine: the emulated node end to end, with a verdict.

``run_demo`` first compiles the analysis kernels (or loads them from Numba's cache)
on a small in-process sample, so that compiling never stalls the running node,
then starts, all in this process and on free loopback ports:

1. the emulated testbed (``configs/testbed.yaml``) serving every instrument;
2. an embedded MQTT broker (amqtt, pure Python) unless ``--broker`` names one;
3. the daemon (``configs/sim-daemon.yaml`` re-addressed to those ports);
4. a live status view on a terminal (plain status lines otherwise).

The daemon finds the delays, then (at ``--drift-at`` s, by default 35 % of the
run, and not before a few windows of key) the demo rotates Bob's fiber
polarization: the QBER interlock pauses the key and the compensation drives the
polarization controller until the QBER is back below target. After
``--duration`` s the daemon shuts down (safe state, outbox flushed).

The run ends with a verdict: PASS or FAIL and, per stage, the figure and the
threshold it had to meet (:func:`verdict`). The run folder ``runs/demo-<UTC stamp>/``
gets ``summary.json`` (the raw figures, times in s after the start),
``history.json`` (every window), ``daemon.log``, ``histogram.png`` and
``qber_keyrate.png``. Exit 0 on PASS, 1 on FAIL, 2 for bad options.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from ._cli_options import parse_host_port
from ._runs import new_run_dir

log = logging.getLogger("qnet.demo")

#: Shortest run with the drift: ~5 s to calibrate, 5 s of key, up to ~25 s to
#: trip and compensate, 5 s to show the key back.
MIN_DURATION_S = 45.0
#: Shortest run without the drift (``--drift-at`` past the end).
MIN_DURATION_NO_DRIFT_S = 8.0
#: Windows with a QBER needed before the drift is imposed (the "before" figure).
CLEAN_WINDOWS = 3
#: Stage thresholds.
MAX_DELAY_ERROR_PS = 100
KEY_RESTORED_SHARE = 0.5
TRIP_WITHIN_S = 10.0
#: Screen width the output is made for.
WIDTH = 80


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


def warm_up(daemon_cfg: Any, testbed_yaml: Path) -> float:
    """Compile (or load from Numba's cache) every kernel the run uses; returns the seconds.

    Runs the node's own analysis once on 0.3 s of an in-process testbed's tags: the tag
    generator, the windower (coincidences, QBER, key rate), the delay finder, the clock
    fit, drift tracking, the compensation's QBER and the histogram. Compiling inside
    the running node would hold the interpreter for tens of seconds on a small machine,
    long enough for every instrument to time out.
    """
    from coincidence import CoincidenceCounter, CorrelationHistogram, qber_from_matrix
    from drivers.sim.testbed import load_testbed

    from .acquisition import Windower
    from .calibration import CalibrationError, find_channel_delays, fit_clock, track_shift

    t0 = time.monotonic()
    acq = daemon_cfg.daemon.acquisition
    cal = daemon_cfg.daemon.calibration
    roles = acq.role_map()
    tb = load_testbed(testbed_yaml)
    batch = tb.advance(int(0.3e12))
    w = Windower(acq.n_channels, 0.1, acq.coincidence_window_ps, roles, None)
    w.feed(batch)
    kw = {"max_delay_ps": cal.max_delay_ps, "resolution_ps": cal.resolution_ps}
    with contextlib.suppress(CalibrationError):
        fit_clock(batch, roles, None, **kw)
    with contextlib.suppress(CalibrationError):
        find_channel_delays(batch, roles, acq.n_channels, **kw)
    track_shift(batch, roles, w.delays_ps, max_shift_ps=cal.track_max_shift_ps)
    counter = CoincidenceCounter(acq.n_channels, acq.coincidence_window_ps, w.delays_ps)
    counter.process(batch)
    rep = counter.result()
    qber_from_matrix(rep.coincidences, max(rep.duration_s, 1e-9), roles)
    hist = CorrelationHistogram(0, 4, 20, 2000, 0)
    hist.process(batch)
    hist.result()
    return time.monotonic() - t0


# -- formatting for people ---------------------------------------------------------------------


def pct(x: float | None) -> str:
    """A fraction as a percentage with two decimals (``-`` when unknown)."""
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.2f} %"


def rate(x: float | None, unit: str) -> str:
    """``13.72 kbit/s``, ``1.20 Mcps``, ``850 Hz``: a rate with an SI prefix."""
    if x is None or not math.isfinite(x):
        return "-"
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.0f} {unit}"


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None


def status_line(elapsed_s: float, status: dict[str, Any]) -> str:
    """One plain status line (at most 80 columns) for a non-terminal stdout."""
    lw = status.get("last_window") or {}
    cal = (status.get("calibration") or {}).get("state") or "-"
    comp = (status.get("compensation") or {}).get("state") or "-"
    key = "PAUSED" if status.get("key_paused") else rate(lw.get("secure_rate_bps"), "bit/s")
    line = (
        f"{elapsed_s:5.1f} s  cal {cal:<7} QBER Z {pct(lw.get('qber_z')):>7} "
        f"X {pct(lw.get('qber_x')):>7}  key {key:>12}  comp {comp}"
    )
    return line[:WIDTH]


# -- the verdict ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One stage of the verdict: its figure, the threshold and whether it was met."""

    name: str
    figure: str
    threshold: str
    ok: bool | None  # None: skipped (no drift in this run)
    why: str = ""  # for a failed stage: what happened and what to try
    detail: str = ""  # a second line under the figure


def verdict(summary: dict[str, Any]) -> list[Stage]:
    """The stages of a demo run, judged from ``summary`` (see :func:`run_demo`).

    Every QBER is a percentage with two decimals, labelled with its basis or as
    the mean of the Z and X bases; rates carry their SI prefix.
    """
    s = summary
    stages: list[Stage] = []
    err = s.get("delay_error_ps")
    cal_ok = s.get("calibration") == "done" and err is not None and err <= MAX_DELAY_ERROR_PS
    cal_at = s.get("calibrated_at_s")
    stages.append(
        Stage(
            "delays found",
            f"worst error {err} ps" + (f" (at {cal_at:.1f} s)" if cal_at is not None else "")
            if err is not None
            else "not found",
            f"<= {MAX_DELAY_ERROR_PS} ps",
            cal_ok,
            ""
            if cal_ok
            else f"calibration {s.get('calibration')}: {s.get('calibration_error') or ''} "
            "(daemon.log in the run folder has the details)",
        )
    )
    trip = s.get("qber_trip")
    before = s.get("qber_before_drift")
    drift = s.get("drift_at_s") is not None
    q_ok = before is not None and trip is not None and before < trip
    stages.append(
        Stage(
            "QBER before drift" if drift else "QBER",
            f"{pct(before)} mean; Z {pct(s.get('qber_z_before'))}, X {pct(s.get('qber_x_before'))}",
            f"< {pct(trip)} trip",
            q_ok,
            "" if q_ok else "no window with enough sifted counts, or the link is misaligned",
        )
    )
    if not drift:
        for name in ("interlock tripped", "compensation recovered", "key rate restored"):
            stages.append(Stage(name, "skipped: no drift in this run", "", None))
        return stages
    tripped_after = s.get("tripped_after_s")
    t_ok = tripped_after is not None and tripped_after <= TRIP_WITHIN_S
    stages.append(
        Stage(
            "interlock tripped",
            f"{tripped_after:.1f} s after drift, at {pct(s.get('trip_reading'))}"
            if tripped_after is not None
            else "did not trip",
            f"<= {TRIP_WITHIN_S:.0f} s",
            t_ok,
            ""
            if t_ok
            else "the drift did not raise the QBER above the threshold in time; see daemon.log",
        )
    )
    comp = s.get("compensation") or {}
    target = s.get("compensation_target")
    c_ok = comp.get("state") == "converged"
    took = s.get("compensation_took_s")
    fig = (
        f"{pct(comp.get('qber'))} mean, {comp.get('evaluations')} points"
        + (f", {took:.0f} s" if took is not None else "")
        if comp.get("qber") is not None
        else f"still {comp.get('state')}"
    )
    why = ""
    if not c_ok:
        left = s.get("duration_s", 0) - (s.get("drift_at_s") or 0)
        why = (
            f"compensation still {comp.get('state')} when the run ended, {left:.0f} s after "
            f"the drift: it needs 15-30 s on a 2-core machine; try --duration "
            f"{int(max(90, 1.5 * s.get('duration_s', 60)))}"
            if comp.get("state") in ("running", "idle", None)
            else f"compensation {comp.get('state')}: {comp.get('reason') or comp.get('error')}"
        )
    stages.append(Stage("compensation recovered", fig, f"< {pct(target)} goal", c_ok, why))
    k_before, k_after = s.get("key_rate_before_bps"), s.get("key_rate_final_bps")
    k_ok = (
        k_before is not None
        and k_after is not None
        and k_before > 0
        and k_after >= KEY_RESTORED_SHARE * k_before
    )
    stages.append(
        Stage(
            "key rate restored",
            f"{rate(k_after, 'bit/s')}, before {rate(k_before, 'bit/s')}",
            f">= {100 * KEY_RESTORED_SHARE:.0f} %",
            k_ok,
            ""
            if k_ok
            else "the key rate did not come back before the end: try a longer --duration",
            detail=f"final QBER {pct(s.get('final_qber'))} mean",
        )
    )
    return stages


#: Columns of the verdict table: mark, stage, figure, threshold (80 in all).
_COLS = (7, 23, 37, 13)


def verdict_lines(stages: list[Stage], out: Path, headline: str = "") -> list[str]:
    """The verdict as a table of at most 80 columns (the demo's final screen)."""
    import textwrap

    failed = [st for st in stages if st.ok is False]
    head = "PASS" if not failed else f"FAIL ({len(failed)} of {len(stages)} stages)"
    mark_w, name_w, fig_w, need_w = _COLS
    lines = ["", f"{head}  qnet demo{': ' + headline if headline else ''}"[:WIDTH], ""]
    lines.append(f"{'':<{mark_w}}{'stage':<{name_w}}{'result':<{fig_w}}{'need':<{need_w}}".rstrip())
    for st in stages:
        mark = {True: "  ok", False: "  FAIL", None: "  -"}[st.ok]
        figs = textwrap.wrap(st.figure, fig_w - 1) or [""]
        figs += textwrap.wrap(st.detail, fig_w - 1)
        for k, fig in enumerate(figs):
            row = (
                f"{mark if k == 0 else '':<{mark_w}}{st.name if k == 0 else '':<{name_w}}"
                f"{fig:<{fig_w}}{st.threshold if k == 0 else ''}"
            )
            lines.append(row.rstrip()[:WIDTH])
    lines.append("")
    lines.append("  mean: of the Z and X bases' QBER; trip: the QBER interlock's threshold;")
    lines.append("  goal: the compensation's target")
    for st in failed:
        lines += _wrap(f"  why ({st.name}): {st.why}", indent=" " * 8)
    lines += _wrap(f"  run folder: {out}", indent=" " * 8)
    lines.append("    summary.json, history.json, daemon.log, qber_keyrate.png, histogram.png")
    return lines


def _wrap(text: str, indent: str) -> list[str]:
    import textwrap

    return textwrap.wrap(text, WIDTH, subsequent_indent=indent)


# -- the run ----------------------------------------------------------------------------------


def _setup_logging(out: Path) -> Callable[[], None]:
    """Everything (INFO and up) to ``daemon.log`` in the run folder; the screen stays clean.

    The embedded broker (amqtt) logs errors only: its notices about options the
    demo does not use (``password-file``, ``sys_interval``) are not the operator's.
    """
    handler = logging.FileHandler(out / "daemon.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    for h in saved[0]:
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("amqtt").setLevel(logging.ERROR)  # its config notices are not ours
    for name in ("transitions", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING)

    def restore() -> None:
        root.removeHandler(handler)
        handler.close()
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])

    return restore


async def run_demo(
    duration_s: float = 60.0,
    drift_at_s: float | None = None,
    broker: tuple[str, int] | None = None,
    runs_dir: Path = Path("runs"),
    live: bool = True,
    echo: Any = None,
) -> tuple[int, Path, dict[str, Any]]:
    """Run the demo (see the module docstring); returns (exit code, run folder, summary).

    ``echo(text, nl=True)`` prints (``typer.echo``; default: nothing, e.g. in tests).
    While it runs, every log record goes to ``daemon.log`` in the run folder only.
    """
    out = new_run_dir(runs_dir, "demo")
    stamp = out.name
    restore_logging = _setup_logging(out)
    try:
        return await _run(duration_s, drift_at_s, broker, out, stamp, live, echo)
    finally:
        restore_logging()


async def _run(
    duration_s: float,
    drift_at_s: float | None,
    broker: tuple[str, int] | None,
    out: Path,
    stamp: str,
    live: bool,
    echo: Any,
) -> tuple[int, Path, dict[str, Any]]:
    """The run itself (see :func:`run_demo`), with the logging already in the run folder."""
    from rich.console import Console
    from rich.live import Live

    from coincidence import CorrelationHistogram
    from drivers.sim import physics as ph
    from telemetry import BrokerSettings

    from . import _plots
    from ._daemon_config import load_daemon_config
    from ._remote import RemoteError, client_id, request
    from .daemon import Daemon
    from .simnode import CONFIGS, free_port, make_sim_node
    from .status_view import render

    def say(line: str, nl: bool = True) -> None:
        if echo is not None:
            echo(line, nl=nl)

    amqtt_broker = None
    say("analysis kernels: compiling (first run) or loading from cache ...", nl=False)
    warm_s = await asyncio.to_thread(
        warm_up, load_daemon_config(CONFIGS / "sim-daemon.yaml"), CONFIGS / "testbed.yaml"
    )
    say(f" ready in {warm_s:.0f} s")
    if broker is None:
        port = free_port()
        amqtt_broker = await _start_amqtt(port)
        broker = ("127.0.0.1", port)
    testbed, cfg_path = make_sim_node(out / "node", broker=broker)
    cfg = load_daemon_config(cfg_path)
    qrule = cfg.daemon.interlocks.get("qber")
    qber_trip = qrule.trip_above if qrule is not None else 0.06
    comp_cfg = cfg.daemon.compensation
    testbed.serve()
    daemon = Daemon(cfg)
    console = Console(width=WIDTH)
    drift_at = duration_s * 0.35 if drift_at_s is None else drift_at_s
    drift_wall: float | None = None
    hist = None
    status: dict[str, Any] = {}
    settings = BrokerSettings(host=broker[0], port=broker[1], client_id=client_id())
    start_wall = time.time()
    t_start = time.monotonic()
    try:
        await daemon.start()
        ctx = (
            Live(console=console, refresh_per_second=4, transient=True)
            if live
            else contextlib.nullcontext()
        )
        with ctx as view:
            last_print = -1
            while (elapsed := time.monotonic() - t_start) < duration_s:
                clean = [h for h in daemon.history if h.get("qber") is not None]
                if (
                    drift_wall is None
                    and elapsed >= drift_at
                    and daemon.calibration.get("state") == "done"
                    and len(clean) >= CLEAN_WINDOWS
                ):
                    testbed.impose_rotation((0.0, 1.0, 0.6))
                    drift_wall = time.time()
                    daemon._event("demo", "polarization drift imposed on Bob's fiber", None)
                    log.info("demo: polarization drift imposed on Bob's fiber at %.1f s", elapsed)
                try:
                    reply = await request(
                        settings, cfg.node, {"device": "daemon", "action": "status"}, 5
                    )
                    status = reply.get("result") or status
                except RemoteError as exc:
                    status = daemon.status()  # broker hiccup: show the local view
                    log.warning("status over MQTT failed: %s", exc)
                if view is not None:
                    view.update(render(status, f"qnet demo  {elapsed:4.0f} / {duration_s:.0f} s"))
                elif int(elapsed) // 5 != last_print:
                    last_print = int(elapsed) // 5
                    say(status_line(elapsed, status))
                await asyncio.sleep(0.5)
        # the coincidence histogram at the found delay, from a last capture
        acq = cfg.daemon.acquisition
        assert acq is not None and daemon.roles is not None
        a, b = daemon.roles.alice["H"], daemon.roles.bob["H"]
        if daemon.windower is not None and daemon.upkeep is not None:
            with contextlib.suppress(Exception):
                batch = await daemon.upkeep.capture(1.0)
                d = daemon.windower.delays_ps
                h = CorrelationHistogram(a, b, 20, 2000, int(d[b] - d[a]))
                h.process(batch)
                hist = h.result()
        status = daemon.status()
    finally:
        shutdown = await daemon.shutdown()
        testbed.stop()
        if amqtt_broker is not None:
            with contextlib.suppress(Exception):
                await amqtt_broker.shutdown()
    end_wall = time.time()
    history = list(daemon.history)
    events = list(daemon.events)
    truth = ph.channel_delays_ps(testbed.params)
    truth = [int(x - truth[0]) for x in truth]
    found = status.get("delays_ps") or []
    summary = _summarize(
        history,
        events,
        status,
        start_wall=start_wall,
        end_wall=end_wall,
        drift_wall=drift_wall,
        truth=truth,
        found=found,
        qber_trip=qber_trip,
        target=comp_cfg.target_qber if comp_cfg is not None else None,
    )
    summary.update(
        run=str(out),
        duration_s=duration_s,
        kernels_ready_s=round(warm_s, 1),
        shutdown=shutdown,
        broker="embedded amqtt" if amqtt_broker is not None else f"{broker[0]}:{broker[1]}",
    )
    stages = verdict(summary)
    summary["verdict"] = {
        "pass": all(st.ok is not False for st in stages),
        "stages": [st.__dict__ for st in stages],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "history.json").write_text(json.dumps(history, default=str))
    t = [h["time_s"] - start_wall for h in history]
    fig = _plots.qber_keyrate_figure(
        history,
        start_s=start_wall,
        duration_s=duration_s,
        qber_trip=qber_trip,
        drift_at_s=summary.get("drift_at_s"),
        paused=_plots.periods(
            t, [bool(h.get("key_paused")) for h in history], end_wall - start_wall
        ),
        compensating=summary["compensating_s"],
        title=f"qnet demo {stamp}: QBER, sifted and secure key rate (node {cfg.node})",
    )
    _plots.save(fig, out / "qber_keyrate.png")
    if hist is not None:
        win = acq.coincidence_window_ps
        fig = _plots.histogram_figure(
            hist,
            window_ps=win,
            pair=f"Alice H (ch {a}) / Bob H (ch {b})",
            a_label="Alice H",
            b_label="Bob H",
        )
        _plots.save(fig, out / "histogram.png")
    return (0 if summary["verdict"]["pass"] else 1), out, summary


def _summarize(
    history: list[dict[str, Any]],
    events: list[dict[str, Any]],
    status: dict[str, Any],
    *,
    start_wall: float,
    end_wall: float,
    drift_wall: float | None,
    truth: list[int],
    found: list[int],
    qber_trip: float,
    target: float | None,
) -> dict[str, Any]:
    """The run's figures (times in s after the start), from the daemon's history and events."""

    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - start_wall, 2)

    cal = status.get("calibration") or {}
    cal_ev = [e for e in events if e["kind"] == "calibration" and e["text"].startswith("delays")]
    err = max((abs(f - t) for f, t in zip(found, truth, strict=False)), default=None)
    drift_t = drift_wall if drift_wall is not None else math.inf
    cal_t = cal_ev[0]["time_s"] + 1.0 if cal_ev else math.inf  # + one window
    # windows cut after the delays were applied (the first ones are not aligned yet)
    before = [h for h in history if cal_t < h["time_s"] < drift_t and h.get("qber") is not None][
        -10:
    ]
    qz = _mean([h.get("qber_z") for h in before])
    qx = _mean([h.get("qber_x") for h in before])
    trips = [
        e
        for e in events
        if e["kind"] == "interlock" and e["text"].startswith("qber trip") and e["time_s"] >= drift_t
    ]
    reading = None
    if trips:
        with contextlib.suppress(ValueError, IndexError):
            reading = float(trips[0]["text"].split("=")[1].split()[0])
    comp_periods: list[tuple[float, float]] = []
    began: float | None = None
    for e in events:
        if e["kind"] != "compensation":
            continue
        if e["text"].startswith("started"):
            began = e["time_s"]
        elif began is not None:
            comp_periods.append((rel(began) or 0.0, rel(e["time_s"]) or 0.0))
            began = None
    if began is not None:
        comp_periods.append((rel(began) or 0.0, rel(end_wall) or 0.0))
    last = [h for h in history[-5:] if h.get("qber") is not None]
    final_q = _mean([_mean([h.get("qber_z"), h.get("qber_x")]) for h in last])
    comp = dict(status.get("compensation") or {})
    took = None
    if comp.get("finished_s") and comp_periods:
        took = comp_periods[-1][1] - comp_periods[-1][0]
    for k in ("started_s", "finished_s"):
        if comp.get(k):
            comp[k] = rel(comp[k])
    return {
        "windows": status.get("windows"),
        "calibration": cal.get("state"),
        "calibration_error": cal.get("error"),
        "calibrated_at_s": rel(cal_ev[0]["time_s"]) if cal_ev else None,
        "delays_ps_found": found,
        "delays_ps_true": truth,
        "delay_error_ps": err,
        "qber_trip": qber_trip,
        "qber_z_before": qz,
        "qber_x_before": qx,
        "qber_before_drift": _mean([qz, qx]) if qz is not None and qx is not None else None,
        "key_rate_before_bps": _mean([h.get("secure_rate_bps") for h in before]),
        "drift_at_s": rel(drift_wall),
        "tripped_after_s": round(trips[0]["time_s"] - drift_t, 2) if trips else None,
        "trip_reading": reading,
        "compensation": comp,
        "compensation_target": target,
        "compensation_took_s": took,
        "compensating_s": comp_periods,
        "final_qber": final_q,
        "key_rate_final_bps": _mean([h.get("secure_rate_bps") for h in history[-5:]]),
        "interlock_events": [
            f"{rel(e['time_s']):.1f} s: {e['text']}" for e in events if e["kind"] == "interlock"
        ],
    }


def demo(
    duration: Annotated[
        float, typer.Option(help="seconds to run (at least 45 with the drift)")
    ] = 60.0,
    drift_at: Annotated[
        float | None,
        typer.Option(
            help="second at which Bob's polarization is rotated (default: 35 % of the run; "
            "past --duration: no drift)"
        ),
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
    """Run the emulated node end to end and end with a PASS/FAIL verdict per stage.

    Starts the emulated testbed, an embedded MQTT broker (unless --broker) and the
    daemon; the delays are found, a polarization drift is imposed at --drift-at
    (default: 35 % of --duration) and compensated. The run folder runs/demo-<stamp>/
    holds summary.json, history.json, daemon.log and the plots. Exit 0 on PASS,
    1 on FAIL, 2 for bad options.
    """
    import sys

    if link or keep_serving:  # the two-site demo: controller/demo_link.py
        from .demo_link import main as link_demo

        raise typer.Exit(link_demo(duration, runs, keep_serving, link))
    drift_on = drift_at is None or drift_at < duration
    minimum = MIN_DURATION_S if drift_on else MIN_DURATION_NO_DRIFT_S
    if not duration >= minimum:
        what = "with the drift" if drift_on else "without the drift"
        raise typer.BadParameter(
            f"the demo needs at least {minimum:.0f} s {what} (calibration, a few windows of "
            f"key, the drift tripping the interlock and the compensation recovering); got "
            f"{duration:g}"
            + (
                f"; without the drift (--drift-at past --duration) "
                f"{MIN_DURATION_NO_DRIFT_S:.0f} s will do"
                if drift_on
                else ""
            ),
            param_hint="--duration",
        )
    if drift_at is not None and not drift_at >= 0:
        raise typer.BadParameter(f"must be >= 0, got {drift_at:g}", param_hint="--drift-at")
    addr = parse_host_port(broker) if broker else None
    live = live and sys.stdout.isatty()
    code, out, summary = asyncio.run(
        run_demo(duration, drift_at, addr, runs, live, echo=typer.echo)
    )
    stages = [Stage(**st) for st in summary["verdict"]["stages"]]
    drift = summary.get("drift_at_s")
    headline = f"{duration:g} s run" + (f", drift at {drift:.1f} s" if drift is not None else "")
    for line in verdict_lines(stages, out, headline):
        typer.secho(line, bold=line.startswith(("PASS", "FAIL")))
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``qnet demo`` (the full demo) to the app."""
    app.command("demo")(demo)


if __name__ == "__main__":
    typer.run(demo)
