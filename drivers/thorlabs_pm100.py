"""Thorlabs PM100 series optical power meter (PM100D/PM100A/PM100USB), over SCPI (USB-TMC).

Command set: Thorlabs "PM100D Optical Power and Energy Meter, Operation
Manual", chapter "Computer Interface" / "SCPI Command Reference":
``SENSe:CORRection:WAVelength`` (nm), ``SENSe:AVERage:COUNt``,
``MEASure:POWer?`` (W) and ``SYSTem:ERRor?``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ._instrument import Instrument
from ._properties import control, measurement, parse_int


class ThorlabsPM100(Instrument):
    """Optical power meter: wavelength correction, averaging, power reading."""

    MODEL = "Thorlabs PM100"
    IDENTITY_PATTERN = r"(?i)thorlabs\s*,\s*PM10[0-9]"
    ERROR_QUERY = "SYST:ERR?"
    #: The meter's ranges. Neither setting can harm the meter or the light: unconfigured,
    #: the hardware range applies (``DEFAULT_LIMITS`` is the same).
    HARDWARE_LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "wavelength_m": (400e-9, 1800e-9),
        "averages": (1.0, 10000.0),
    }
    DEFAULT_LIMITS: ClassVar[dict[str, tuple[float, float]]] = HARDWARE_LIMITS

    wavelength_m = control(
        "SENS:CORR:WAV?",
        "SENS:CORR:WAV {:.3f}",
        scale=1e9,
        doc="Wavelength used for the sensor's responsivity correction, m (nm on the wire).",
    )
    averages = control(
        "SENS:AVER:COUN?",
        "SENS:AVER:COUN {:d}",
        parse_int,
        integer=True,
        doc="Number of samples averaged per reading (about 3 ms each).",
    )
    power_w = measurement("MEAS:POW?", doc="Optical power, W.")

    def readings(self) -> dict[str, Any]:
        """Wavelength and power."""
        return {"wavelength_m": self.wavelength_m, "power_w": self.power_w}
