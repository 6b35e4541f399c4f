"""Interlock trip and recovery: a latched SNSPD trips the controller's interlock engine, its
actions (through the command validation) bring the bias back and reset the latch."""

from __future__ import annotations

import math

import pytest

from controller.commands import PermissionsConfig, validate_request
from controller.interlocks import ActionSpec, InterlockEngine, InterlockRule

from ._checks import assert_detectors_alive


def _run(bench, actions):
    """Execute interlock actions the way the daemon does: validate as ``system``, then apply."""
    surfaces = {n: bench.surface(n) for n in bench.instruments}
    done = []
    for k, action in enumerate(actions):
        req = validate_request(
            {"id": k, **action.as_request()}, surfaces, PermissionsConfig(), role="system"
        )
        surf, inst = surfaces[req.device], bench.instruments[req.device]
        if req.op == "set":
            surf.settings[req.name].setter(inst, req.value)
        else:
            surf.actions[req.name](inst)
        done.append(f"{req.device}.{req.name}")
    return done


@pytest.mark.destructive
@pytest.mark.needs("bias_source")
def test_interlock_latch_trip_and_recovery(bench):
    """Bias above the switching current latches the SNSPD; the interlock trips and recovers it."""
    il = bench.hil.interlock
    if il is None:
        pytest.skip("the config has no hil.interlock section (latch and recovery bias)")
    name, smu = bench.one("bias_source")
    reading = f"{name}.latched"
    rule = InterlockRule(
        reading=reading,
        kind="flag",
        device=name,
        actions=(
            ActionSpec(device=name, setting="bias_current_a", value=il.recover_bias_a),
            ActionSpec(device=name, action="reset_latch"),
        ),
    )
    engine = InterlockEngine({"snspd_latch": rule})
    assert not smu.latched(), (
        f"{name}: the SNSPD is latched before the test (V = {smu.voltage_v:.3g} V) - reset it "
        "(qnet set / reset_latch) and check the bias"
    )
    assert engine.evaluate({reading: smu.latched()}, 0.0) == [], "interlock tripped while healthy"

    smu.bias_current_a = il.latch_bias_a
    assert smu.latched(), (
        f"{name}: a bias of {il.latch_bias_a * 1e6:.2f} uA did not latch the SNSPD (V = "
        f"{smu.voltage_v:.3g} V, latch threshold {smu.options['latch_threshold_v']} V) - is the "
        "detector connected and cold? Is hil.interlock.latch_bias_a above its switching current?"
    )
    events = engine.evaluate({reading: smu.latched()}, 1.0)
    assert [e.event for e in events] == ["trip"], f"expected one trip, got {events}"
    assert engine.active() == ["snspd_latch"]

    done = _run(bench, events[0].actions)
    still = smu.latched()
    events = engine.evaluate({reading: still}, 2.0)
    assert not still and [e.event for e in events] == ["clear"], (
        f"{name}: after the interlock's actions ({', '.join(done)}) the SNSPD is "
        f"{'still latched' if still else 'recovered but the interlock did not clear'} (V = "
        f"{smu.voltage_v:.3g} V) - check the SMU's output and compliance, and the cryostat"
    )
    assert math.isclose(smu.bias_current_a, il.recover_bias_a, rel_tol=1e-3), (
        f"{name}: bias after recovery {smu.bias_current_a:.3g} A, expected {il.recover_bias_a:.3g}"
    )
    assert engine.active() == []
    biased = [
        c
        for c, det in bench.detector_names.items()
        if bench.hil.detectors.instruments.get(det) == name
    ]
    optical = bench.testbed is not None or bench.config_options.get("run_optical")
    if biased and optical and bench.configured("laser") and bench.configured("time_tagger"):
        current = bench.pump()
        assert_detectors_alive(bench, bench.acquire(0.05), current, biased)
