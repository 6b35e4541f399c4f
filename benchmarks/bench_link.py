"""The QKD link engine end to end: tags at two sites -> identical secret key blocks.

``python -m benchmarks link``: the in-process engine (both sites in one process, every
message through real channel frames) on a synthetic BBM92 link: secret key rate against
the asymptotic BBM92 rate of the same sifted rate and QBER (measured in the same run),
EC efficiency of the stored frames, lock time, and how much faster than real time
the engine runs. ``python -m benchmarks.bench_link 30`` (function :func:`reliability`):
the whole engine over CURVE channel ends through the WAN emulator with 20 ms latency,
10 Mbit/s, 1 % loss and a 30 s outage, plus an optical outage that drops the clock lock.
"""

from __future__ import annotations

import math
import time
from typing import Any

from benchmarks._harness import Row

QBER = 0.02


def _cfg(frame_bits: int, link: str = "bench-link", **wan: Any) -> Any:
    """The benchmark link's settings; ``wan`` overrides (``cascade_prefer``, ``auth``)."""
    import distill as ds
    from controller.qkd_link import LinkConfig

    return LinkConfig(
        link=link,
        epoch_ps=500_000_000_000,
        frame_bits=frame_bits,
        acquire_span_ps=4 * 10**12,
        track_window_ps=500_000_000_000,
        finite=ds.FiniteKeyConfig(q_tol=0.05),
        q_expected=QBER,
        **wan,
    )


def engine_run(duration_s: float = 30.0, frame_bits: int = 2**16, seed: int = 11) -> dict[str, Any]:
    """One in-process run: the analyser's report and the wall time the engine took."""
    from controller.qkd_link import AnalyserLink, SenderLink
    from controller.qkd_link.testing import run_in_process, two_site_tags

    tags = two_site_tags(
        duration_s=duration_s, qber=QBER, offset_ps=-700_000_000_000, ppm=-65.0, seed=seed
    )
    alice, bob = SenderLink(_cfg(frame_bits)), AnalyserLink(_cfg(frame_bits))
    t0 = time.perf_counter()
    run_in_process(alice, bob, tags.alice, tags.bob)
    wall = time.perf_counter() - t0
    identical = alice.stored_blocks == bob.stored_blocks
    return {"report": bob.report(), "wall_s": wall, "identical": identical, "tags": tags}


def run() -> list[Row]:
    """Secret key rate, EC efficiency, lock time and engine speed on the synthetic link."""
    from coincidence import bbm92_asymptotic

    r = engine_run()
    rep = r["report"]
    q = (rep.qber_z + rep.qber_x) / 2
    bound = bbm92_asymptotic(rep.sifted_rate_bps, rep.qber_z, rep.qber_x, f_ec=1.0)
    notes = (
        f"{rep.data_s:.1f} s of data, Bob's clock -0.7 s and -65 ppm; sifted "
        f"{rep.sifted_rate_bps:.0f} bit/s at QBER {q:.4f}; {rep.blocks_stored} blocks of "
        f"2^16 sifted bits stored at both sites (identical: {r['identical']}), "
        f"{rep.blocks_discarded} discarded; q_tol 0.05, eps_sec 1e-10, eps_cor 1e-15"
    )
    return [
        Row(
            "link secret key rate, in-process engine, synthetic 18 kcps pairs, QBER 2 %",
            rep.secret_rate_bps,
            "bit/s",
            target="> 0, blocks identical at both sites",
            ok=rep.secret_rate_bps > 0 and r["identical"],
            baseline=bound,
            baseline_name="asymptotic BBM92 rate of the same sifted rate and QBER, f = 1",
            notes=notes + " (the rate counts the lock-acquisition time too)",
        ),
        Row(
            "link EC efficiency f of the stored frames (2^16 bits, QBER 2 %)",
            rep.ec_efficiency,
            "",
            target="<= 1.08",
            ok=math.isfinite(rep.ec_efficiency) and rep.ec_efficiency <= 1.08,
            notes="leak_EC / (n h2(e)), e = errors Cascade corrected",
        ),
        Row(
            "link clock lock from photon timing (offset -0.7 s, -65 ppm)",
            rep.lock_time_s,
            "s of data",
            target="<= 10",
            ok=rep.lock_time_s <= 10,
            notes=(
                f"offset {rep.offset_ps / 1e12:.9f} s +- {rep.offset_uncertainty_ps:.1f} ps, "
                f"{rep.ppm:.4f} +- {rep.ppm_uncertainty:.1g} ppm"
            ),
        ),
        Row(
            "link engine speed, both sites in one process",
            rep.data_s / r["wall_s"],
            "x real time",
            target=">= 1",
            ok=rep.data_s / r["wall_s"] >= 1,
            notes=f"{rep.data_s:.1f} s of data in {r['wall_s']:.1f} s wall clock",
        ),
    ]


def reliability(outage_s: float = 30.0, seed: int = 1) -> dict[str, Any]:
    """The whole engine over CURVE ends and the WAN emulator: 20 ms, 10 Mbit/s, 1 % loss, outage.

    75 s of two-site tags (Bob's clock +0.4 s, +25 ppm) offered at real-time pace;
    a ``outage_s`` blackhole outage of the classical channel from batch 60 (15 s);
    the source dark from 50 s to 58 s of data (the clock lock is lost and must be
    re-acquired from the photons). Runs the shipped WAN settings (configs/alice-link.yaml):
    Cascade's round-trip preset and Wegman-Carter authentication from a 4096-byte
    pre-shared secret refilled from the keys. Counts epochs sent, answered, lost and twice,
    the lock's acquisitions and losses, and whether both sites' blocks are identical.
    """
    import tempfile
    from pathlib import Path

    from controller.qkd_link import AnalyserLink, SenderLink
    from controller.qkd_link.testing import run_link_over_wan, two_site_tags

    tags = two_site_tags(
        duration_s=75.0,
        qber=QBER,
        offset_ps=400_000_000_000,
        ppm=25.0,
        seed=seed,
        dark_s=(50.0, 58.0),
    )
    import secrets

    wan = {"cascade_prefer": "rounds", "auth": "wegman-carter"}
    psk = secrets.token_bytes(4096)
    alice = SenderLink(_cfg(2**16, "reliability", **wan), record_sifted=True, auth_secret=psk)
    bob = AnalyserLink(_cfg(2**16, "reliability", **wan), record_sifted=True, auth_secret=psk)
    with tempfile.TemporaryDirectory() as tmp:
        rep = run_link_over_wan(
            tags,
            alice,
            bob,
            Path(tmp) / "keys",
            latency_s=0.02,
            bandwidth_bps=10e6,
            loss=0.01,
            outage_s=outage_s,
            outage_at_batch=60,
            outage_mode="blackhole",
            pace_s=0.25,
            timeout_s=outage_s + 180,
            seed=seed,
        )
    rb, ra = bob.report(), alice.report()
    return {
        "ok": rep.ok and rb.lock_acquisitions >= 2,
        "epochs_sent": rep.epochs_sent,
        "epochs_answered": rep.epochs_answered,
        "epochs_lost": rep.epochs_lost,
        "epochs_twice": rep.epochs_twice,
        "epochs_without_lock": rb.epochs_without_lock,
        "lock_acquisitions": rb.lock_acquisitions,
        "lock_losses": rb.lock_losses,
        "lock_time_s": rb.lock_time_s,
        "blocks_a": rep.blocks_a,
        "blocks_b": rep.blocks_b,
        "blocks_discarded": rb.blocks_discarded,
        "keys_identical": rep.keys_identical,
        "secret_rate_bps": rb.secret_rate_bps,
        "ec_efficiency": rb.ec_efficiency,
        "qber_z": rb.qber_z,
        "qber_x": rb.qber_x,
        "auth_pool_bits": rb.auth_pool_bits,
        "sender_unanswered": ra.epochs_unanswered,
        "duration_s": rep.duration_s,
        "channel_a": {
            k: rep.channel_a.get(k) for k in ("sent", "resent", "connects", "disconnects")
        },
        "channel_b": {
            k: rep.channel_b.get(k) for k in ("sent", "resent", "connects", "disconnects")
        },
    }


if __name__ == "__main__":
    import json
    import sys

    out = reliability(float(sys.argv[1]) if len(sys.argv) > 1 else 30.0)
    print(json.dumps(out, indent=1, default=str))
    sys.exit(0 if out["ok"] else 1)
