"""ID Quantique ID120 silicon SPAD module, over its RS-232 / USB-serial ASCII command interface.

Command set: ID Quantique "ID120 Visible Single-Photon Detector, User
Guide", section "Remote control" / command reference: ``BIAS:VOLTAGE`` (uV),
``THRESHOLD:VOLTAGE`` (uV), ``DEADTIME:TIME``, ``REG:TEMP_SET_POINT`` and
``REG:MEASURED_TEMP`` (milli-degrees Celsius), ``REG:RUN`` (TRUE/FALSE),
``COUNTERS:INTEGRATION_TIME`` (ms) and ``COUNTERS:DETECTION_FREQ?`` (Hz); all
values are integers, lines end in LF. Caveat: we could not confirm the unit of
``DEADTIME:TIME`` from the public text we found; this driver sends integer
nanoseconds (``dead_time_s`` scale 1e9). Check against the manual of the unit on
the bench before relying on the dead-time setting.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ._instrument import Instrument
from ._properties import control, measurement, parse_int, switch


class IDQuantiqueID120(Instrument):
    """Single-photon avalanche detector: bias (efficiency), dead time, temperature, count rate."""

    MODEL = "ID Quantique ID120"
    IDENTITY_PATTERN = r"(?i)ID\s*Quantique.*ID\s*120"
    BAUDRATE = 115200
    #: The module's ranges (user guide, "Specifications").
    HARDWARE_LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "bias_v": (0.0, 250.0),
        "threshold_v": (0.0, 1.0),
        "dead_time_s": (40e-9, 1e-3),
        "temperature_setpoint_c": (-50.0, -10.0),
        "integration_time_s": (0.2, 100.0),
    }
    #: Unconfigured ranges. The bias that overdrives an APD depends on the diode's breakdown
    #: voltage, so without ``limits.bias_v`` at most 200 V is accepted; the discriminator
    #: threshold keeps to 0-0.5 V (the lower half: above it real detections are discarded);
    #: dead time at least 50 ns (shorter raises afterpulsing); the cooler -45 to -20 degC.
    #: The integration time cannot harm anything: its hardware range.
    DEFAULT_LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "bias_v": (0.0, 200.0),
        "threshold_v": (0.0, 0.5),
        "dead_time_s": (50e-9, 1e-3),
        "temperature_setpoint_c": (-45.0, -20.0),
        "integration_time_s": (0.2, 100.0),
    }

    bias_v = control(
        "BIAS:VOLTAGE?",
        "BIAS:VOLTAGE {:d}",
        parse_int,
        scale=1e6,
        integer=True,
        doc="APD bias voltage (sets the detection efficiency), V (uV on the wire).",
    )
    threshold_v = control(
        "THRESHOLD:VOLTAGE?",
        "THRESHOLD:VOLTAGE {:d}",
        parse_int,
        scale=1e6,
        integer=True,
        doc="Discriminator threshold, V (uV on the wire).",
    )
    dead_time_s = control(
        "DEADTIME:TIME?",
        "DEADTIME:TIME {:d}",
        parse_int,
        scale=1e9,
        integer=True,
        doc="Dead time after each detection, s (ns on the wire; see module caveat).",
    )
    temperature_setpoint_c = control(
        "REG:TEMP_SET_POINT?",
        "REG:TEMP_SET_POINT {:d}",
        parse_int,
        scale=1e3,
        integer=True,
        doc="APD cooler setpoint, degrees Celsius (milli-degrees on the wire).",
    )
    temperature_c = measurement(
        "REG:MEASURED_TEMP?", parse_int, scale=1e3, doc="APD temperature, degrees Celsius."
    )
    integration_time_s = control(
        "COUNTERS:INTEGRATION_TIME?",
        "COUNTERS:INTEGRATION_TIME {:d}",
        parse_int,
        scale=1e3,
        integer=True,
        doc="Counter integration time, s (ms on the wire).",
    )
    count_rate_hz = measurement(
        "COUNTERS:DETECTION_FREQ?", parse_int, doc="Detection rate of the last window, Hz."
    )
    running = switch(
        "REG:RUN?", "REG:RUN {}", on_text="TRUE", off_text="FALSE", doc="Detector armed."
    )

    def readings(self) -> dict[str, Any]:
        """Temperature, bias and count rate."""
        return {
            "temperature_c": self.temperature_c,
            "bias_v": self.bias_v,
            "count_rate_hz": self.count_rate_hz,
        }
