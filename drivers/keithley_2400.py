"""Keithley 2400 SourceMeter as the SNSPD bias source, over SCPI (GPIB/RS-232/VISA).

Command set: Keithley "Series 2400 SourceMeter User's Manual" (2400S-900-01),
section 18 "SCPI Command Reference": SOURce (``:SOUR:FUNC``, ``:SOUR:CURR``),
SENSe (``:SENS:FUNC``, ``:SENS:VOLT:PROT`` compliance), OUTPut (``:OUTP``),
FORMat (``:FORM:ELEM VOLT`` so ``:READ?`` returns the voltage only) and
``:SYST:ERR?``. On connect the driver selects current sourcing with voltage
sensing.

An SNSPD biased below its switching current sits at ~0 V; when it latches
into the resistive state the voltage across it jumps at constant bias.
:meth:`Keithley2400.latched` compares the measured voltage with the option
``latch_threshold_v``; :meth:`Keithley2400.reset_latch` drops the bias to 0,
waits ``reset_wait_s`` and ramps back to the setpoint in ``reset_steps`` steps.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from ._instrument import Instrument
from ._properties import control, measurement, switch


class Keithley2400(Instrument):
    """SNSPD bias current source with voltage read-back and latch recovery."""

    MODEL = "Keithley 2400"
    IDENTITY_PATTERN = r"(?i)KEITHLEY INSTRUMENTS INC\.?\s*,\s*MODEL 24[0-9]{2}"
    ERROR_QUERY = ":SYST:ERR?"
    #: The ranges of this driver's job, biasing an SNSPD: at most 30 uA (above the switching
    #: current of every nanowire it is meant for) and 5 V compliance. The SourceMeter itself
    #: goes much higher; these bounds are what no config may exceed.
    HARDWARE_LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "bias_current_a": (0.0, 30e-6),
        "compliance_v": (0.0, 5.0),
    }
    #: Unconfigured ranges: at most 20 uA bias (below the switching current of typical
    #: nanowires; set ``limits.bias_current_a`` from the detector's datasheet) and 2 V
    #: compliance (enough to see a latch, ``latch_threshold_v``).
    DEFAULT_LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "bias_current_a": (0.0, 20e-6),
        "compliance_v": (0.0, 2.0),
    }
    OPTIONS: ClassVar[dict[str, Any]] = {
        "latch_threshold_v": 0.05,
        "reset_wait_s": 0.05,
        "reset_steps": 5,
        "ramp_step_s": 0.01,
    }

    output_on = switch(":OUTP?", ":OUTP {}", doc="Source output enabled.")
    bias_current_a = control(":SOUR:CURR?", ":SOUR:CURR {:.6E}", doc="Bias current setpoint, A.")
    compliance_v = control(
        ":SENS:VOLT:PROT?", ":SENS:VOLT:PROT {:.4f}", doc="Voltage compliance, V."
    )
    voltage_v = measurement(":READ?", doc="Measured voltage across the detector, V.")

    def _on_connect(self) -> None:
        for cmd in (":SOUR:FUNC CURR", ':SENS:FUNC "VOLT"', ":FORM:ELEM VOLT"):
            self.transport.write(cmd)

    def latched(self) -> bool:
        """True if the detector sits in its resistive (latched) state: |V| above the threshold."""
        return abs(self.voltage_v) > float(self.options["latch_threshold_v"])

    def reset_latch(self) -> bool:
        """Bias to 0, wait, ramp back to the setpoint in steps; True if it is no longer latched.

        Holds the instrument lock for the whole sequence so no other caller
        changes the bias in between. Every step goes through the limit check.
        """
        with self.lock:
            target = self.bias_current_a
            # the setpoint read back must itself be safe before the bias is dropped
            self.check_limit("bias_current_a", target, "reset_latch")
            self.bias_current_a = 0.0
            time.sleep(float(self.options["reset_wait_s"]))
            steps = max(1, int(self.options["reset_steps"]))
            for k in range(1, steps + 1):
                self.bias_current_a = target * k / steps
                time.sleep(float(self.options["ramp_step_s"]))
            return not self.latched()

    def readings(self) -> dict[str, Any]:
        """Output state, bias current and voltage."""
        return {
            "output_on": self.output_on,
            "bias_current_a": self.bias_current_a,
            "voltage_v": self.voltage_v,
        }
