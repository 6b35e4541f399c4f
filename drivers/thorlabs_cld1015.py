"""Thorlabs CLD1015 compact laser diode + TEC controller (pump laser), over SCPI (USB-TMC/VISA).

Command set: Thorlabs "CLD101x Compact Laser Diode and Temperature Controller,
Operation Manual", chapter "Computer Interface" / "SCPI Commands" (SOURce1 =
laser current, SOURce2 = TEC temperature, OUTPut1/OUTPut2 = laser/TEC output,
MEASure, OUTPut:PROTection:INTLock and :KEYLock, SYSTem:ERRor). The same
subsystems exist on the ITC4000 series; ``IDENTITY_PATTERN`` decides which
models are accepted. Units on the wire: amperes, degrees Celsius (the
default ``UNIT:TEMP``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ._instrument import Instrument
from ._properties import control, measurement, parse_bool, switch


class ThorlabsCLD1015(Instrument):
    """Pump laser diode current source with TEC, interlock and key-lock status."""

    MODEL = "Thorlabs CLD1015"
    IDENTITY_PATTERN = r"(?i)thorlabs\s*,\s*CLD101[05]"
    ERROR_QUERY = "SYST:ERR?"
    #: The controller's ranges (manual, "Technical Data": laser current 0-1.5 A).
    HARDWARE_LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "current_setpoint_a": (0.0, 1.5),
        "tec_temperature_setpoint_c": (15.0, 35.0),
    }
    #: Unconfigured ranges. What a laser diode survives depends on the diode, not on the
    #: controller: without ``limits.current_setpoint_a`` at most 0.1 A is accepted (the
    #: operating current of the low-power pump diodes this node is built for); configure the
    #: diode's own maximum. The TEC keeps to 20-30 degC (room temperature, no condensation).
    DEFAULT_LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "current_setpoint_a": (0.0, 0.1),
        "tec_temperature_setpoint_c": (20.0, 30.0),
    }

    laser_on = switch("OUTP1:STAT?", "OUTP1:STAT {}", doc="Laser current output enabled.")
    tec_on = switch("OUTP2:STAT?", "OUTP2:STAT {}", doc="TEC output enabled.")
    current_setpoint_a = control(
        "SOUR1:CURR?", "SOUR1:CURR {:.6E}", doc="Laser current setpoint, A."
    )
    current_a = measurement("MEAS:CURR?", doc="Measured laser current, A.")
    tec_temperature_setpoint_c = control(
        "SOUR2:TEMP?", "SOUR2:TEMP {:.3f}", doc="TEC temperature setpoint, degrees Celsius."
    )
    tec_temperature_c = measurement("MEAS:TEMP?", doc="Measured TEC temperature, degrees Celsius.")
    interlock_tripped = measurement(
        "OUTP:PROT:INTL:TRIP?", parse_bool, doc="True while the interlock circuit is open."
    )
    keylock_tripped = measurement(
        "OUTP:PROT:KEYL:TRIP?", parse_bool, doc="True while the key switch blocks the output."
    )

    def readings(self) -> dict[str, Any]:
        """Output state, current, TEC temperature and interlock."""
        return {
            "laser_on": self.laser_on,
            "current_a": self.current_a,
            "tec_temperature_c": self.tec_temperature_c,
            "interlock_ok": not self.interlock_tripped,
        }
