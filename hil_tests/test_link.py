"""The link: pump sweep (linearity, CAR), delay calibration, QBER after compensation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coincidence import qber_from_matrix
from controller.compensation import CompensationSettings, compensate

from ._analysis import coincidence_matrix, coincidence_stats, difference_histogram, linear_fit
from ._checks import assert_detectors_alive, delays


def _sweep(bench, hil_report):
    """Run the pump sweep once per session (both sweep checks read it)."""
    memo = bench.memo.get("sweep")
    if memo is not None:
        if isinstance(memo, AssertionError):
            raise memo
        return memo
    s = bench.hil.sweep
    try:
        d = delays(bench)["delays_ps"]
        alice = sorted(bench.roles.alice.values())
        bob = sorted(bench.roles.bob.values())
        pms = bench.of_kind("power_meter")
        data = {"x": [], "current_a": [], "singles_a": [], "singles_b": [], "coinc": [], "car": []}
        data["x_label"] = (
            f"pump power at {pms[0][0]} (W)" if pms else "pump current above threshold (A)"
        )
        hil_report.data["sweep"] = data
        last = None
        for current in s.currents_a:
            bench.pump(current)
            batch = bench.acquire(s.window_s)
            x = float(pms[0][1].power_w) if pms else current - bench.hil.laser.threshold_current_a
            st = coincidence_stats(
                batch,
                alice,
                bob,
                d,
                bench.hil.coincidence_window_ps,
                bench.hil.accidental_offsets_ps,
            )
            data["x"].append(x)
            data["current_a"].append(current)
            data["singles_a"].append(st.singles_alice_hz)
            data["singles_b"].append(st.singles_bob_hz)
            data["coinc"].append(st.coincidences_hz)
            data["car"].append(st.car)
            last = (batch, current)
        assert_detectors_alive(bench, *last)
        memo = data
    except AssertionError as exc:
        memo = exc
    finally:
        bench.restore_safe_state()
    bench.memo["sweep"] = memo
    if isinstance(memo, AssertionError):
        raise memo
    return memo


def _table(data):
    return "; ".join(
        f"{c * 1e3:.1f} mA: Alice {a:.0f}/s, Bob {b:.0f}/s, coinc {k:.0f}/s, CAR {r:.3g}"
        for c, a, b, k, r in zip(
            data["current_a"],
            data["singles_a"],
            data["singles_b"],
            data["coinc"],
            data["car"],
            strict=True,
        )
    )


@pytest.mark.optical
@pytest.mark.needs("laser", "time_tagger")
def test_pump_sweep_rates_linear(bench, hil_report):
    """Singles and coincidences rise linearly with the pump power (low-power regime)."""
    if bench.hil.sweep is None:
        pytest.skip("the config has no hil.sweep section (pump currents to sweep)")
    data = _sweep(bench, hil_report)
    x = np.asarray(data["x"])
    problems = []
    for key, what in (
        ("singles_a", "Alice's singles"),
        ("singles_b", "Bob's singles"),
        ("coinc", "coincidences"),
    ):
        y = np.asarray(data[key])
        fit = linear_fit(x, y)
        if fit.slope <= 0:
            problems.append(f"{what} do not rise with pump power (slope {fit.slope:.3g})")
        elif fit.r2 < bench.hil.sweep.min_r2:
            problems.append(
                f"{what} are not linear in pump power: R^2 = {fit.r2:.4f} < "
                f"{bench.hil.sweep.min_r2} (worst residual {fit.max_rel_residual:.1%})"
            )
    assert not problems, (
        "; ".join(problems)
        + " - detectors saturating (dead time), a pump that does not follow its current, "
        "or light leaking in? Sweep: " + _table(data)
    )


@pytest.mark.optical
@pytest.mark.needs("laser", "time_tagger")
def test_car_falls_with_pump_power(bench, hil_report):
    """The coincidence-to-accidental ratio falls as the pump power rises."""
    s = bench.hil.sweep
    if s is None:
        pytest.skip("the config has no hil.sweep section (pump currents to sweep)")
    data = _sweep(bench, hil_report)
    car = data["car"]
    problems = []
    if not car[0] >= s.car_drop_factor * car[-1]:
        problems.append(
            f"CAR at the lowest power ({car[0]:.3g}) is not >= {s.car_drop_factor} x CAR at the "
            f"highest ({car[-1]:.3g})"
        )
    for k in range(1, len(car)):
        if car[k] > car[k - 1] * (1 + s.car_rise_tolerance):
            problems.append(
                f"CAR rises from {car[k - 1]:.3g} to {car[k]:.3g} between "
                f"{data['current_a'][k - 1] * 1e3:.1f} and {data['current_a'][k] * 1e3:.1f} mA"
            )
    assert not problems, (
        "; ".join(problems) + " - check the coincidence window and channel delays, and that "
        "accidentals are not dominated by dark counts or stray light. Sweep: " + _table(data)
    )


@pytest.mark.optical
@pytest.mark.needs("laser", "time_tagger")
def test_delay_calibration_finds_fiber_delay(bench, hil_report):
    """The calibration finds Bob's H delay after Alice's H within one histogram bin."""
    dcfg = bench.hil.delay
    if dcfg is None:
        pytest.skip("the config has no hil.delay section (the expected fiber delay)")
    cal = delays(bench)
    a, b = bench.roles.alice["H"], bench.roles.bob["H"]
    found = int(cal["delays_ps"][b] - cal["delays_ps"][a])
    edges, counts = difference_histogram(cal["batch"], a, b, found, 30 * dcfg.bin_ps, dcfg.bin_ps)
    names = bench.detector_names
    hil_report.data["delay"] = {
        "found_ps": found,
        "expected_ps": dcfg.fiber_delay_ps,
        "bin_ps": dcfg.bin_ps,
    }
    hil_report.data["histogram"] = {
        "edges": [int(e) for e in edges],
        "counts": [int(c) for c in counts],
        "found_ps": found,
        "expected_ps": dcfg.fiber_delay_ps,
        "bin_ps": dcfg.bin_ps,
        "pair": f"{names[a]}-{names[b]}",
    }
    unresolved = [names.get(c, str(c)) for c in cal["result"].unresolved]
    assert not unresolved, (
        f"no significant coincidence peak for {', '.join(unresolved)} - "
        + "; ".join(bench.detector_hint(c) for c in cal["result"].unresolved)
    )
    diff = found - dcfg.fiber_delay_ps
    assert abs(diff) <= dcfg.bin_ps, (
        f"found delay {names[a]}->{names[b]} {found} ps, configured {dcfg.fiber_delay_ps} ps: off "
        f"by {diff} ps (> one {dcfg.bin_ps} ps bin) - was a fiber or cable changed? Update "
        "hil.delay.fiber_delay_ps if the new length is intended"
    )


@pytest.mark.optical
@pytest.mark.needs("laser", "time_tagger", "polarization_controller")
def test_qber_below_threshold_after_compensation(bench, hil_report):
    """Polarization compensation brings the QBER of both bases below ``hil.qber.max``."""
    q = bench.hil.qber
    d = delays(bench)["delays_ps"]
    window = bench.hil.coincidence_window_ps
    current = bench.pump()
    name, pc = bench.one("polarization_controller")
    surf = bench.surface(name)
    limits = [surf.settings[f"element{k}_voltage_v"].limits for k in range(1, pc.N_ELEMENTS + 1)]
    record = {"qber": [], "max": q.max}
    hil_report.data["compensation"] = record

    def qber_of(duration_s):
        batch = bench.acquire(duration_s)
        m = coincidence_matrix(batch, bench.n_channels, d, window)
        return batch, qber_from_matrix(m, batch.duration_ps * 1e-12, bench.roles)

    def measure(setpoints):
        pc.setpoints = setpoints
        _, rep = qber_of(q.window_s)
        value = 0.5 * (rep.qber_z + rep.qber_x)
        record["qber"].append(value if math.isfinite(value) else 0.5)
        return value

    batch, before = qber_of(q.window_s)
    assert_detectors_alive(bench, batch, current)
    result = compensate(
        measure,
        pc.setpoints,
        limits,
        CompensationSettings(
            target_qber=q.target, initial_step=q.initial_step_v, max_evaluations=q.max_evaluations
        ),
    )
    pc.setpoints = result.setpoints
    batch, after = qber_of(q.verify_window_s)
    record["final"] = {
        "z": after.qber_z,
        "x": after.qber_x,
        "n": result.evaluations,
        "why": result.reason,
    }
    assert after.qber_z < q.max and after.qber_x < q.max, (
        f"QBER after compensation Z {after.qber_z:.4f}, X {after.qber_x:.4f} (before: Z "
        f"{before.qber_z:.4f}, X {before.qber_x:.4f}); threshold {q.max} - the optimizer stopped "
        f"after {result.evaluations} evaluations ({result.reason}) at {result.setpoints}. Check "
        f"the polarization controller ({name}) responds, the source's visibility, and the "
        "channel-to-detector mapping (hil.detectors)"
    )
