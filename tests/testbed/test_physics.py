"""Pure physics functions of the emulated link."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.sim import physics as ph


def test_pump_power_zero_below_threshold_and_linear_above():
    laser = ph.LaserParams(threshold_current_a=0.02, slope_efficiency_w_per_a=0.5)
    assert ph.pump_power_w(0.01, True, laser) == 0.0
    assert ph.pump_power_w(0.05, False, laser) == 0.0
    p1, p2 = ph.pump_power_w(0.03, True, laser), ph.pump_power_w(0.05, True, laser)
    assert p2 / p1 == pytest.approx(3.0)
    src = ph.SourceParams(brightness_pairs_per_s_per_w=1e8)
    assert ph.pair_rate_hz(p2, src) == pytest.approx(1e8 * 0.015)


def test_fiber_delay_and_loss():
    arm = ph.ArmParams(fiber_length_km=10.0, fiber_loss_db_per_km=0.2, group_index=1.468)
    assert ph.fiber_delay_ps(arm) == pytest.approx(48_965_000, rel=1e-3)  # ~4.9 us / km
    assert ph.fiber_transmission(arm) == pytest.approx(10 ** (-0.2), rel=1e-12)


def test_aligned_qber_is_visibility_limited_and_rotation_raises_it():
    src = ph.SourceParams(visibility=0.96)
    qz, qx = ph.expected_qber(np.eye(2), src)
    assert qz == pytest.approx(0.02) and qx == pytest.approx(0.02)
    qz, qx = ph.expected_qber(ph.rotation((0.0, 0.6, 0.0)), src)
    # a rotation about the circular axis mixes both bases: (1 - V cos(theta)) / 2
    assert qz == pytest.approx((1 - 0.96 * math.cos(0.6)) / 2)
    assert qx == pytest.approx((1 - 0.96 * math.cos(0.6)) / 2)


@pytest.mark.parametrize("state", ["phi+", "phi-", "psi+", "psi-"])
def test_every_bell_state_is_aligned_at_identity(state):
    src = ph.SourceParams(bell_state=state, visibility=1.0)
    assert ph.expected_qber(np.eye(2), src) == pytest.approx((0.0, 0.0), abs=1e-12)
    assert ph.joint_detector_probabilities(np.eye(2), src).sum() == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(st.tuples(*[st.floats(-3, 3)] * 3))
def test_compensator_voltages_undo_any_rotation(vec):
    comp = ph.CompensatorParams()
    u = ph.rotation(vec)
    volts = ph.compensator_voltages(u.conj().T, comp)
    assert all(0.0 <= v <= comp.max_voltage_v for v in volts)
    total = ph.compensator_unitary_from_voltages(volts, comp) @ u
    assert abs(abs(np.trace(total)) / 2 - 1) < 1e-9
    src = ph.SourceParams()
    assert ph.expected_qber(total, src)[0] == pytest.approx(ph.expected_qber(np.eye(2), src)[0])


def test_snspd_efficiency_latch_and_reset_sequence():
    det = ph.DetectorParams(critical_current_a=20e-6, reset_current_a=0.5e-6)
    assert ph.detector_efficiency(5e-6, False, det) < ph.detector_efficiency(16e-6, False, det)
    assert ph.detector_efficiency(16e-6, True, det) == 0.0
    latched = ph.next_latched(False, 21e-6, det)
    assert latched
    assert ph.next_latched(latched, 16e-6, det)  # back below I_c: still latched
    assert not ph.next_latched(ph.next_latched(latched, 0.0, det), 16e-6, det)  # 0 then back
    assert ph.snspd_voltage_v(16e-6, True, det) > 50 * ph.snspd_voltage_v(16e-6, False, det)


def test_bad_parameters_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="reset_current_a"):
        ph.PhysicsParams(alice_detectors=ph.DetectorParams(reset_current_a=30e-6))
    with pytest.raises(ValueError, match="rotation vector"):
        ph.rotation((1.0, float("nan"), 0.0))
    with pytest.raises(ValueError, match="heralding_efficiency"):
        ph.ArmParams(heralding_efficiency=1.5)


def test_event_classes_thin_the_pair_process_consistently():
    joint = ph.joint_detector_probabilities(np.eye(2), ph.SourceParams())
    eff = np.full(8, 0.8)
    rate, cum, _, _ = ph.event_classes(1e6, joint, 0.5, 0.25, eff)
    p_a, p_b = 0.5 * 0.8, 0.25 * 0.8
    assert rate == pytest.approx(1e6 * (1 - (1 - p_a) * (1 - p_b)))
    assert cum[-1] == 1.0 and np.all(np.diff(cum) >= 0)
    singles = ph.expected_singles_hz(1e6, joint, 0.5, 0.25, eff, np.zeros(8))
    assert singles[:4].sum() == pytest.approx(1e6 * p_a)
    assert singles[4:].sum() == pytest.approx(1e6 * p_b)
