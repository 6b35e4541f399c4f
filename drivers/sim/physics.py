"""The physics of the emulated two-node polarization-entangled link.

Everything here is a pure function of parameters and state (no clocks, no
sockets): the testbed (``drivers.sim.testbed``) owns the state and calls these
between generator steps, and the tag generator (``drivers.sim.tags``) turns the
tables computed here into time tags.

Model, in the order a photon meets it:

* pump laser: optical power ``slope * max(0, I - I_th)`` while the output is on;
* SPDC source: pair rate ``brightness * pump power`` (CW pumping, pairs form a
  Poisson process, so multi-pair emission and the accidentals it causes arise
  by themselves); a heralding (coupling) efficiency per arm;
* fiber per arm: loss ``alpha * L`` dB, delay ``L * n_g / c``; Bob's photon is
  rotated by the fiber's unitary (a slow random walk on SU(2)) and then by the
  polarization controller's compensating unitary;
* passive basis choice (50/50), PBS, four detectors per arm (H, V, D, A):
  efficiency vs bias (SNSPD: sigmoid of ``I / I_c``, latching at ``I >= I_c``
  until the bias is brought to ~0 and back), dark counts, Gaussian jitter,
  dead time and afterpulsing (applied by the generator).

Channels: Alice H, V, D, A = 0..3, Bob H, V, D, A = 4..7.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

C_M_PER_S = 299_792_458.0
DETECTORS = ("H", "V", "D", "A")
N_CHANNELS = 8

# Single-qubit states in the H/V basis.
_KETS = {
    "H": np.array([1.0, 0.0], dtype=complex),
    "V": np.array([0.0, 1.0], dtype=complex),
    "D": np.array([1.0, 1.0], dtype=complex) / math.sqrt(2.0),
    "A": np.array([1.0, -1.0], dtype=complex) / math.sqrt(2.0),
}
_BELL = {
    "phi+": np.array([1, 0, 0, 1], dtype=complex) / math.sqrt(2.0),
    "phi-": np.array([1, 0, 0, -1], dtype=complex) / math.sqrt(2.0),
    "psi+": np.array([0, 1, 1, 0], dtype=complex) / math.sqrt(2.0),
    "psi-": np.array([0, 1, -1, 0], dtype=complex) / math.sqrt(2.0),
}
_KET_MATRIX = np.stack([_KETS[d] for d in DETECTORS], axis=1)  # 2 x 4, columns H, V, D, A
_PAULI = (
    np.array([[0, 1], [1, 0]], dtype=complex),
    np.array([[0, -1j], [1j, 0]], dtype=complex),
    np.array([[1, 0], [0, -1]], dtype=complex),
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LaserParams(_Model):
    """Pump laser: optical power vs drive current."""

    threshold_current_a: float = Field(0.020, ge=0.0)
    slope_efficiency_w_per_a: float = Field(0.5, gt=0.0)
    wavelength_nm: float = Field(775.0, gt=0.0)


class SourceParams(_Model):
    """SPDC pair source."""

    brightness_pairs_per_s_per_w: float = Field(2.0e9, ge=0.0)
    bell_state: Literal["phi+", "phi-", "psi+", "psi-"] = "phi+"
    visibility: float = Field(0.98, ge=0.0, le=1.0)
    """Two-photon interference visibility; the aligned QBER is ``(1 - visibility) / 2``."""


class ArmParams(_Model):
    """One arm of the link: coupling, fiber and the cable delays to each detector."""

    heralding_efficiency: float = Field(0.5, ge=0.0, le=1.0)
    fiber_length_km: float = Field(0.0, ge=0.0)
    fiber_loss_db_per_km: float = Field(0.2, ge=0.0)
    group_index: float = Field(1.468, ge=1.0)
    cable_delays_ps: tuple[int, int, int, int] = (0, 0, 0, 0)
    drift_rad_per_sqrt_s: float = Field(0.0, ge=0.0)
    """Polarization random walk strength: rotation angle std grows as ``sigma * sqrt(t)``."""


class DetectorParams(_Model):
    """The four detectors of one arm (same model for all four)."""

    kind: Literal["snspd", "spad"] = "snspd"
    efficiency: float = Field(0.85, ge=0.0, le=1.0)
    """Maximum (plateau) detection efficiency."""
    critical_current_a: float = Field(12e-6, gt=0.0)
    """SNSPD switching current: biasing at or above it latches the detector."""
    sigmoid_center: float = Field(0.7, gt=0.0)
    """``I / I_c`` at which the SNSPD efficiency reaches half its plateau."""
    sigmoid_width: float = Field(0.05, gt=0.0)
    reset_current_a: float = Field(0.5e-6, ge=0.0)
    """A latched SNSPD recovers once its bias falls to this magnitude or below."""
    default_bias_a: float = Field(10e-6, ge=0.0)
    """Bias of detectors that no instrument drives."""
    dark_count_hz: float = Field(100.0, ge=0.0)
    dark_count_rise: float = Field(0.02, gt=0.0)
    """SNSPD dark counts grow as ``exp((I/I_c - 1) / rise)`` toward the critical current."""
    jitter_ps: float = Field(30.0, ge=0.0)
    dead_time_ps: int = Field(50_000, ge=0)
    afterpulse_probability: float = Field(0.0, ge=0.0, le=1.0)
    afterpulse_delay_ps: float = Field(100_000.0, ge=0.0)
    """Mean extra delay (exponential) of an afterpulse after the dead time."""
    normal_resistance_ohm: float = Field(5_000.0, ge=0.0)
    """Resistance of a latched (normal) SNSPD, seen by the bias SMU."""
    series_resistance_ohm: float = Field(50.0, ge=0.0)


class CompensatorParams(_Model):
    """The polarization controller: liquid-crystal retarders in Bob's arm.

    Element ``k`` has its fast axis at ``axes_deg[k]``; its retardance falls with
    the drive voltage as ``max / (1 + (V / V_half)**2)`` (a liquid-crystal cell's
    typical curve). With axes 0, 45, 0 degrees the first three realize any
    rotation (Z-X-Z Euler angles); the fourth (45 degrees) is spare.
    """

    axes_deg: tuple[float, ...] = (0.0, 45.0, 0.0, 45.0)
    max_retardance_rad: float = Field(2.2 * math.pi, gt=2.0 * math.pi)
    half_voltage_v: float = Field(1.5, gt=0.0)
    max_voltage_v: float = Field(10.0, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> CompensatorParams:
        lo = retardance_from_voltage(self.max_voltage_v, self)
        if self.max_retardance_rad - lo < 2.0 * math.pi:
            raise ValueError(
                "compensator: retardance range over 0..max_voltage_v must span 2 pi "
                f"(got {self.max_retardance_rad - lo:.3f} rad); raise max_retardance_rad "
                "or lower half_voltage_v"
            )
        return self


def retardance_from_voltage(voltage_v: float, comp: CompensatorParams) -> float:
    """Retardance (rad) of a liquid-crystal element driven at ``voltage_v``."""
    v = max(0.0, float(voltage_v))
    return comp.max_retardance_rad / (1.0 + (v / comp.half_voltage_v) ** 2)


def voltage_for_retardance(retardance_rad: float, comp: CompensatorParams) -> float:
    """Drive voltage whose retardance equals ``retardance_rad`` modulo 2 pi."""
    lo = retardance_from_voltage(comp.max_voltage_v, comp)
    r = float(retardance_rad) % (2.0 * math.pi)
    while r < lo:
        r += 2.0 * math.pi
    if r > comp.max_retardance_rad:
        raise ValueError(f"retardance {retardance_rad} rad is outside the element's range")
    return comp.half_voltage_v * math.sqrt(comp.max_retardance_rad / r - 1.0)


def compensator_unitary_from_voltages(
    voltages_v: list[float], comp: CompensatorParams
) -> np.ndarray:
    """The controller's unitary from its element voltages (element 1 acts first)."""
    if len(voltages_v) != len(comp.axes_deg):
        raise ValueError(
            f"compensator has {len(comp.axes_deg)} elements, got {len(voltages_v)} voltages"
        )
    u = np.eye(2, dtype=complex)
    for v, ax in zip(voltages_v, comp.axes_deg, strict=True):
        u = waveplate_unitary(retardance_from_voltage(v, comp), math.radians(ax)) @ u
    return u


def compensator_voltages(target: np.ndarray, comp: CompensatorParams) -> list[float]:
    """Element voltages whose unitary equals ``target`` up to a global phase.

    Needs axes 0, 45, 0 (degrees) on the first three elements; any further
    element is set to a full wave (2 pi), i.e. the identity.
    """
    if len(comp.axes_deg) < 3 or tuple(comp.axes_deg[:3]) != (0.0, 45.0, 0.0):
        raise ValueError("compensator_voltages needs the first three axes at 0, 45, 0 degrees")
    r = compensator_retardances(target)
    volts = [voltage_for_retardance(x, comp) for x in r]
    volts += [voltage_for_retardance(2.0 * math.pi, comp)] * (len(comp.axes_deg) - 3)
    return volts


#: Largest clock offset the testbed emulates, ps (1 s: host clocks set by NTP).
MAX_CLOCK_OFFSET_PS = 1_000_000_000_000
#: Largest frequency offset the testbed emulates, ppm (a free-running quartz oscillator).
MAX_CLOCK_PPM = 100.0


class SiteClock(_Model):
    """One tagger's free-running quartz clock against true (simulated) time.

    Its reading at true time ``t`` is ``offset + t * (1 + ppm * 1e-6) + w(t)``, where
    ``w`` is a random walk (Wiener process) of standard deviation
    ``phase_noise_ps_per_sqrt_s * sqrt(t / 1 s)``: the white frequency noise of a
    quartz oscillator (IEEE Std 1139-2008, random-walk phase).
    """

    offset_ps: int = Field(0, ge=-MAX_CLOCK_OFFSET_PS, le=MAX_CLOCK_OFFSET_PS)
    ppm: float = Field(0.0, ge=-MAX_CLOCK_PPM, le=MAX_CLOCK_PPM)
    phase_noise_ps_per_sqrt_s: float = Field(0.0, ge=0.0, le=1.0e6)


class ClockParams(_Model):
    """One shared tagger, or two taggers on free clocks (offset, frequency, phase noise).

    In ``two_taggers`` mode Alice's tagger runs on ``alice`` (against true time) and
    Bob's on Alice's clock plus ``offset_ps`` and ``drift_ppm``, with its own
    ``bob_phase_noise_ps_per_sqrt_s``. Either offset may be negative: the testbed adds
    one common shift to both taggers' readings so that no tag time is negative (the
    shift moves both clocks alike, so Bob-minus-Alice stays as configured).
    """

    mode: Literal["shared", "two_taggers"] = "shared"
    offset_ps: int = Field(0, ge=-MAX_CLOCK_OFFSET_PS, le=MAX_CLOCK_OFFSET_PS)
    """Bob's clock minus Alice's at simulated time zero, ps (two_taggers only; +-1 s)."""
    drift_ppm: float = Field(0.0, ge=-MAX_CLOCK_PPM, le=MAX_CLOCK_PPM)
    """Bob's clock rate minus Alice's, parts per million (two_taggers only; +-100 ppm)."""
    alice: SiteClock = SiteClock()
    """Alice's tagger against true time (two_taggers only)."""
    bob_phase_noise_ps_per_sqrt_s: float = Field(0.0, ge=0.0, le=1.0e6)
    """Random walk of Bob's clock phase, ps per sqrt(s), independent of Alice's."""

    def site(self, side: Literal["alice", "bob"]) -> SiteClock:
        """The clock of one site's tagger against true time."""
        a = self.alice
        if side == "alice":
            return a
        # constructed, not validated: the sums may exceed one clock's range (2 s, 200 ppm)
        return SiteClock.model_construct(
            offset_ps=a.offset_ps + self.offset_ps,
            ppm=a.ppm + self.drift_ppm,
            phase_noise_ps_per_sqrt_s=self.bob_phase_noise_ps_per_sqrt_s,
        )


class PhysicsParams(_Model):
    """All physics parameters of the testbed."""

    laser: LaserParams = LaserParams()
    source: SourceParams = SourceParams()
    alice: ArmParams = ArmParams()
    bob: ArmParams = ArmParams(fiber_length_km=2.0, drift_rad_per_sqrt_s=0.0)
    alice_detectors: DetectorParams = DetectorParams()
    bob_detectors: DetectorParams = DetectorParams()
    clocks: ClockParams = ClockParams()
    compensator: CompensatorParams = CompensatorParams()

    @model_validator(mode="after")
    def _check(self) -> PhysicsParams:
        for name in ("alice_detectors", "bob_detectors"):
            d: DetectorParams = getattr(self, name)
            if d.kind == "snspd" and d.reset_current_a >= d.critical_current_a:
                raise ValueError(
                    f"{name}: reset_current_a ({d.reset_current_a} A) must be below "
                    f"critical_current_a ({d.critical_current_a} A)"
                )
        return self


# ----------------------------------------------------------------------------- source


def pump_power_w(current_a: float, output_on: bool, laser: LaserParams) -> float:
    """Optical pump power (W): ``slope * max(0, I - I_th)`` while the output is on, else 0."""
    if not output_on:
        return 0.0
    return laser.slope_efficiency_w_per_a * max(0.0, float(current_a) - laser.threshold_current_a)


def pair_rate_hz(pump_w: float, source: SourceParams) -> float:
    """Rate of emitted photon pairs (1/s), proportional to the pump power."""
    return source.brightness_pairs_per_s_per_w * max(0.0, float(pump_w))


# ----------------------------------------------------------------------------- fiber


def fiber_transmission(arm: ArmParams) -> float:
    """Power transmission of the arm's fiber (0..1)."""
    return 10.0 ** (-arm.fiber_loss_db_per_km * arm.fiber_length_km / 10.0)


def fiber_delay_ps(arm: ArmParams) -> int:
    """Propagation delay of the arm's fiber, picoseconds (about 4.9 us per km)."""
    return round(arm.fiber_length_km * 1e3 * arm.group_index / C_M_PER_S * 1e12)


def arm_transmission(arm: ArmParams) -> float:
    """Probability that the arm's photon reaches its detectors (heralding x fiber)."""
    return arm.heralding_efficiency * fiber_transmission(arm)


def channel_delays_ps(params: PhysicsParams) -> np.ndarray:
    """Delay from pair emission to each of the 8 channels (fiber + cable), int64 ps."""
    a = fiber_delay_ps(params.alice) + np.asarray(params.alice.cable_delays_ps, np.int64)
    b = fiber_delay_ps(params.bob) + np.asarray(params.bob.cable_delays_ps, np.int64)
    return np.concatenate([a, b]).astype(np.int64)


# ----------------------------------------------------------------------------- polarization


def rotation(vector_rad: np.ndarray | tuple[float, float, float]) -> np.ndarray:
    """SU(2) matrix ``exp(-i theta n.sigma / 2)`` for the Poincare-sphere rotation vector.

    ``vector_rad = theta * n``: rotation by ``theta`` radians about unit axis ``n``
    (x = D/A axis, y = R/L axis, z = H/V axis of the Poincare sphere).
    """
    try:
        x, y, z = (float(c) for c in vector_rad)
    except (TypeError, ValueError):
        raise ValueError(
            f"rotation vector must be 3 finite numbers (rad), got {vector_rad!r}"
        ) from None
    if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(z)):
        raise ValueError(f"rotation vector must be 3 finite numbers (rad), got {vector_rad!r}")
    theta = math.sqrt(x * x + y * y + z * z)
    if theta == 0.0:
        return np.eye(2, dtype=complex)
    c = math.cos(theta / 2)
    s = math.sin(theta / 2) / theta
    # cos(t/2) I - i sin(t/2) (n . sigma)
    return np.array(
        [[complex(c, -s * z), complex(-s * y, -s * x)], [complex(s * y, -s * x), complex(c, s * z)]]
    )


def random_walk(
    u: np.ndarray, sigma_rad_per_sqrt_s: float, dt_s: float, rng: np.random.Generator
) -> np.ndarray:
    """One step of the fiber's polarization random walk (Brownian motion on SU(2))."""
    if sigma_rad_per_sqrt_s <= 0.0 or dt_s <= 0.0:
        return u
    step = rng.normal(0.0, sigma_rad_per_sqrt_s * math.sqrt(dt_s), size=3)
    return rotation(step) @ u


def waveplate_unitary(retardance_rad: float, axis_angle_rad: float) -> np.ndarray:
    """A linear retarder: ``retardance`` about a fast axis at ``axis_angle`` from H."""
    # A fast axis at angle a in real space is at 2a on the Poincare sphere's equator.
    a2 = 2.0 * axis_angle_rad
    return rotation((retardance_rad * math.sin(a2), 0.0, retardance_rad * math.cos(a2)))


def compensator_retardances(target: np.ndarray) -> tuple[float, float, float]:
    """Retardances (rad, in [0, 2 pi)) of three retarders that together equal ``target``.

    The retarders have fast axes at 0, 45, 0 degrees (Z, X, Z on the Poincare sphere)
    and act in that order, like the first three elements of
    :func:`compensator_unitary_from_voltages`; any SU(2) rotation is reachable. Equal
    up to a global phase; :func:`compensator_voltages` uses it to find the setpoints
    that undo a fiber rotation (``compensator_retardances(inverse(U_fiber))``).
    """
    u = np.asarray(target, dtype=complex)
    if u.shape != (2, 2):
        raise ValueError(f"target must be a 2x2 unitary, got shape {u.shape}")
    det = np.linalg.det(u)
    if abs(abs(det) - 1.0) > 1e-6:
        raise ValueError("target is not unitary (|det| != 1)")
    u = u / np.sqrt(det)  # -> SU(2), up to sign
    # U = Rz(c) Rx(b) Rz(a) with Rz(t) = diag(e^{-it/2}, e^{it/2}), Rx(t) = exp(-i t X / 2).
    # u00 = cos(b/2) e^{-i(a+c)/2}, u10 = -i sin(b/2) e^{i(c-a)/2}.
    b = 2.0 * math.atan2(abs(u[1, 0]), abs(u[0, 0]))
    s = -np.angle(u[0, 0]) * 2.0 if abs(u[0, 0]) > 1e-12 else 0.0  # a + c
    d = np.angle(u[1, 0] / -1j) * 2.0 if abs(u[1, 0]) > 1e-12 else 0.0  # c - a
    a = (s - d) / 2.0
    c = (s + d) / 2.0
    two_pi = 2.0 * math.pi
    return (a % two_pi, b % two_pi, c % two_pi)


def joint_detector_probabilities(u_bob: np.ndarray, source: SourceParams) -> np.ndarray:
    """P(Alice's detector a, Bob's detector b) for a pair, 4x4 over (H, V, D, A) x (H, V, D, A).

    Includes the passive 50/50 basis choice on each side (so the table sums to 1)
    and the imperfect visibility as white noise mixed into the two-photon state.
    Bob's photon is transformed by ``u_bob`` (fiber then compensator).
    """
    # |psi> = sum_ij M_ij |i>|j>; (1 x U)|psi> has the coefficient matrix M U^T, and
    # <a|<b| of it is a^dagger (M U^T) b^*: one 4x4 table of amplitudes.
    m = _BELL[source.bell_state].reshape(2, 2) @ np.asarray(u_bob, dtype=complex).T
    p_q = np.abs(_KET_MATRIX.conj().T @ m @ _KET_MATRIX.conj()) ** 2  # within the chosen bases
    return 0.25 * (source.visibility * p_q + (1.0 - source.visibility) * 0.25)


def expected_qber(u_bob: np.ndarray, source: SourceParams) -> tuple[float, float]:
    """Expected (qber_z, qber_x) of sifted coincidences for the Bell state and ``u_bob``."""
    t = joint_detector_probabilities(u_bob, source)
    sign = {"phi+": (1, 1), "phi-": (1, -1), "psi+": (-1, 1), "psi-": (-1, -1)}[source.bell_state]
    out = []
    for (i0, i1), s in zip(((0, 1), (2, 3)), sign, strict=True):
        same = t[i0, i0] + t[i1, i1]
        diff = t[i0, i1] + t[i1, i0]
        out.append((diff if s > 0 else same) / (same + diff))
    return out[0], out[1]


# ----------------------------------------------------------------------------- detectors


def detector_efficiency(bias_a: float, latched: bool, det: DetectorParams) -> float:
    """Detection efficiency at a bias current (SNSPD sigmoid; 0 when latched; SPAD fixed)."""
    if det.kind == "spad":
        return det.efficiency
    if latched or bias_a <= 0.0:
        return 0.0
    x = float(bias_a) / det.critical_current_a
    return det.efficiency / (1.0 + math.exp(-(x - det.sigmoid_center) / det.sigmoid_width))


def detector_dark_rate_hz(bias_a: float, latched: bool, det: DetectorParams) -> float:
    """Dark-count rate (1/s); an SNSPD's rises steeply toward the critical current."""
    if det.kind == "spad":
        return det.dark_count_hz
    if latched or bias_a <= 0.0:
        return 0.0
    x = float(bias_a) / det.critical_current_a
    return det.dark_count_hz * math.exp(min(0.0, x - 1.0) / det.dark_count_rise) + 1e-3 * x


def next_latched(latched: bool, bias_a: float, det: DetectorParams) -> bool:
    """Latch state after the bias becomes ``bias_a``.

    Biasing at or above the critical current latches an SNSPD; a latched one
    stays latched (however the bias moves below I_c) until the bias is brought
    to ``reset_current_a`` or below - the reset sequence is "bias to 0, then back".
    """
    if det.kind == "spad":
        return False
    if abs(bias_a) >= det.critical_current_a:
        return True
    if latched and abs(bias_a) <= det.reset_current_a:
        return False
    return latched


def snspd_voltage_v(bias_a: float, latched: bool, det: DetectorParams) -> float:
    """Voltage the bias SMU measures: series resistance, plus the normal resistance if latched."""
    r = det.series_resistance_ohm + (det.normal_resistance_ohm if latched else 0.0)
    return float(bias_a) * r


def dead_time_rate_hz(rate_hz: float, dead_time_ps: float) -> float:
    """Measured rate of a non-paralyzable detector with dead time, 1/s."""
    tau = dead_time_ps * 1e-12
    return rate_hz / (1.0 + rate_hz * tau)


# ----------------------------------------------------------------------------- generator tables

# Event classes: 16 (a, b) coincident pairs, 4 Alice-only, 4 Bob-only.
N_CLASSES = 24
_CLASS_CH_A = np.array([i for i in range(4) for _ in range(4)] + [0, 1, 2, 3] + [-1] * 4)
_CLASS_CH_B = np.array([4 + j for _ in range(4) for j in range(4)] + [-1] * 4 + [4, 5, 6, 7])


def event_classes(
    pair_rate: float,
    joint: np.ndarray,
    trans_alice: float,
    trans_bob: float,
    eff: np.ndarray,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Thin the pair process to detected events: (rate, cumulative probs, Alice ch, Bob ch).

    Each pair lands in one of 24 classes (both photons detected on detectors
    (a, b), only Alice's on a, only Bob's on b) or is lost; the detected events
    form a Poisson process at ``rate`` whose class is drawn from the cumulative
    table. Channel -1 means "no photon on this side".
    """
    eff = np.asarray(eff, dtype=float)
    pa = trans_alice * eff[:4]
    pb = trans_bob * eff[4:]
    probs = np.concatenate(
        [
            (joint * np.outer(pa, pb)).ravel(),
            pa * (joint @ (1.0 - pb)),
            pb * ((1.0 - pa) @ joint),
        ]
    )
    p_detect = float(probs.sum())
    rate = pair_rate * p_detect
    cum = np.cumsum(probs / p_detect) if p_detect > 0 else np.linspace(0, 1, N_CLASSES)
    cum[-1] = 1.0
    return rate, cum, _CLASS_CH_A, _CLASS_CH_B


def expected_singles_hz(
    pair_rate: float,
    joint: np.ndarray,
    trans_alice: float,
    trans_bob: float,
    eff: np.ndarray,
    dark_hz: np.ndarray,
) -> np.ndarray:
    """Expected count rate of each of the 8 channels (before dead time), 1/s."""
    eff = np.asarray(eff, dtype=float)
    a = pair_rate * trans_alice * eff[:4] * joint.sum(axis=1)
    b = pair_rate * trans_bob * eff[4:] * joint.sum(axis=0)
    return np.concatenate([a, b]) + np.asarray(dark_hz, dtype=float)


def expected_coincidences_hz(
    pair_rate: float,
    joint: np.ndarray,
    trans_alice: float,
    trans_bob: float,
    eff: np.ndarray,
) -> np.ndarray:
    """Expected true-coincidence rate between Alice's and Bob's detectors, 4x4, 1/s."""
    eff = np.asarray(eff, dtype=float)
    return pair_rate * joint * np.outer(trans_alice * eff[:4], trans_bob * eff[4:])
