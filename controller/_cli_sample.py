"""``qnet sample``: analyse a generated BBM92 sample end to end (no daemon, no instruments).

A quick offline check of the coincidence core (``qnet demo`` runs the whole
daemon against the emulated testbed). It generates a BBM92-like 8-channel tag
stream with known pairs (Alice H,V,D,A on channels 0-3, Bob's on 4-7, phi+
state, ~3 % intrinsic QBER, known per-channel cable delays, detector jitter and
dark counts), writes it to ``runs/sample-<UTC timestamp>/sample.npz`` (with the roles, the
found delays and the window in its metadata, so ``qnet analyze sample.npz``
needs no options), finds every channel's delay from the tags alone (the daemon's calibration,
``controller.calibration.find_channel_delays``), counts coincidences at those delays,
prints the same tables as ``qnet analyze`` and saves ``analysis.json`` and a
PNG of the Alice-H / Bob-H coincidence histogram at the found delay in the run
folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from controller._runs import new_run_dir

#: Alice's H,V,D,A detectors are channels 0-3, Bob's 4-7.
ALICE = {"H": 0, "V": 1, "D": 2, "A": 3}
BOB = {"H": 4, "V": 5, "D": 6, "A": 7}
#: Cable/detector delays of the generated sample, ps (what the analysis must find).
TRUE_DELAYS_PS = (0, 1_300, -700, 2_100, 23_400, 24_900, 22_600, 25_700)
#: Intrinsic error probability within a matched basis: 1/32 (about 3.1 %).
ERROR_WEIGHT, RIGHT_WEIGHT, MISMATCH_WEIGHT = 1, 31, 16


def bbm92_pair_channels() -> list[tuple[int, int]]:
    """Channel pairs of a phi+ BBM92 source, repeated in proportion to their probability.

    Per matched basis: right outcomes (H-H, V-V / D-D, A-A) 31 each, wrong ones
    1 each (QBER 1/32); mismatched bases (8 combinations): 16 each, half of all.
    """
    out: list[tuple[int, int]] = []
    for a_label, a_ch in ALICE.items():
        for b_label, b_ch in BOB.items():
            same_basis = (a_label in "HV") == (b_label in "HV")
            if not same_basis:
                weight = MISMATCH_WEIGHT
            elif a_label == b_label:
                weight = RIGHT_WEIGHT
            else:
                weight = ERROR_WEIGHT
            out += [(a_ch, b_ch)] * weight
    return out


def sample(
    duration_s: Annotated[
        float, typer.Option("--duration-s", help="length of the generated sample, s")
    ] = 2.0,
    out: Annotated[
        Path, typer.Option("--out", help="folder that gets the sample-<timestamp> run folder")
    ] = Path("runs"),
    window_ps: Annotated[
        int, typer.Option("--window-ps", help="coincidence window, full width, ps")
    ] = 400,
    seed: Annotated[int, typer.Option("--seed", help="random seed of the sample")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
) -> None:
    """Generate a BBM92 sample, find the delays, analyse it and save a histogram plot.

    No daemon and no instruments: a quick check of the coincidence core. Writes
    ``sample.npz``, ``analysis.json`` and ``coincidence_histogram.png`` to
    ``OUT/sample-<UTC timestamp>/``.
    """
    from rich.console import Console

    from controller._cli_analyze import UsageError, _fail, analysis_dict, key_rates, print_analysis

    if not 0 < duration_s <= 60:
        _fail("sample", f"--duration-s must be in (0, 60], got {duration_s}")
    if window_ps <= 0:
        _fail("sample", f"--window-ps must be positive, got {window_ps}")

    from coincidence import (
        CoincidenceCounter,
        CorrelationHistogram,
        RoleMap,
        generate_pairs,
        write_npz,
    )
    from controller.calibration import CalibrationError, find_channel_delays

    console = Console()
    t0 = time.monotonic()
    try:
        run = new_run_dir(out, "sample")
    except OSError as e:
        _fail("sample", f"cannot create a run folder in {out}: {e.strerror or e}")
    roles: RoleMap = RoleMap(alice=dict(ALICE), bob=dict(BOB), bell_state="phi+")
    batch = generate_pairs(
        duration_ps=round(duration_s * 1e12),
        pair_rate_hz=150_000.0,
        noise_rate_hz=90_000.0,
        n_channels=8,
        pair_channels=bbm92_pair_channels(),
        delays_ps=list(TRUE_DELAYS_PS),
        jitter_ps=40.0,
        seed=seed,
    )
    sample = run / "sample.npz"

    try:
        cal = find_channel_delays(batch, roles, 8, max_delay_ps=100_000, resolution_ps=10)
    except CalibrationError as e:
        typer.echo(f"qnet sample: {e}", err=True)
        raise typer.Exit(1) from None
    if cal.unresolved:
        missing = list(cal.unresolved)
        typer.echo(f"qnet sample: no significant delay for channels {missing}", err=True)
        raise typer.Exit(1)
    delays = [int(d) for d in cal.delays_ps]
    # the file carries its roles and delays: `qnet analyze sample.npz` needs no options
    roles_meta = {"alice": roles.alice, "bob": roles.bob, "bell_state": roles.bell_state}
    meta = {"roles": roles_meta, "delays_ps": delays, "window_ps": window_ps}
    write_npz(sample, batch, metadata={**meta, "source": "qnet sample"})

    counter = CoincidenceCounter(8, window_ps, delays)
    counter.process(batch)
    report = counter.result()
    try:
        qber, secure, note = key_rates(report, roles, 1.16, "both")
    except UsageError as e:
        _fail("sample", str(e))
    d = analysis_dict(
        report,
        source=str(sample),
        roles=roles,
        qber=qber,
        secure_rate_bps=secure,
        note=note,
        f_ec=1.16,
        key_basis="both",
    )
    d["true_delays_ps"] = list(TRUE_DELAYS_PS)
    d["found_delays_ps"] = delays
    (run / "analysis.json").write_text(json.dumps(d, indent=1))

    a, b = ALICE["H"], BOB["H"]
    hist = CorrelationHistogram(a, b, bin_width_ps=20, range_ps=3_000, delay_ps=delays[b])
    hist.process(batch)
    png = run / "coincidence_histogram.png"
    from controller._plots import histogram_figure, save

    pair = f"Alice H (ch {a}) / Bob H (ch {b})"
    fig = histogram_figure(
        hist.result(), window_ps=window_ps, pair=pair, a_label="Alice H", b_label="Bob H"
    )
    save(fig, png)
    elapsed = time.monotonic() - t0

    if as_json:
        typer.echo(json.dumps({**d, "run_dir": str(run), "png": str(png)}))
        return
    print_analysis(console, d)
    console.print(
        "delays found (ps): "
        + ", ".join(f"{c}: {x}" for c, x in enumerate(delays))
        + f"  (generated with {', '.join(str(x - TRUE_DELAYS_PS[0]) for x in TRUE_DELAYS_PS)})"
    )
    console.print(f"files written to [bold]{run}[/] ({elapsed:.1f} s):")
    for f in (sample, run / "analysis.json", png):
        console.print(f"  {f}")


def register(app: typer.Typer) -> None:
    """Add ``qnet sample`` to the command line."""
    app.command("sample")(sample)
