"""Telemetry records of polled instrument readings (laser, detector, power meter, polarization).

Only readings the daemon polls (``daemon.monitor``) become records; unknown
ones are skipped. Temperatures are converted to kelvin as the schema wants.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def device_records(
    node: str, device: str, driver: str, readings: Mapping[str, Any], time_ns: int
) -> list[Any]:
    """Schema records for one device's latest readings (possibly none)."""
    import telemetry as tm

    r = readings
    if driver == "thorlabs_cld1015":
        t = _num(r.get("tec_temperature_c"))
        fields = {
            "current_a": _num(r.get("current_a")),
            "temperature_k": None if t is None else t + 273.15,
            "output_on": r.get("laser_on") if isinstance(r.get("laser_on"), bool) else None,
        }
        if any(v is not None for v in fields.values()):
            return [tm.laser(node=node, device=device, time_ns=time_ns, **fields)]
    elif driver in ("keithley_2400", "idq_id120"):
        t = _num(r.get("temperature_c"))
        latched = r.get("latched")
        fields = {
            "bias_current_a": _num(r.get("bias_current_a")),
            "bias_voltage_v": _num(r.get("bias_v")),
            "temperature_k": None if t is None else t + 273.15,
            "dead_time_s": _num(r.get("dead_time_s")),
            "state": None if not isinstance(latched, bool) else ("latched" if latched else "ok"),
            "armed": r.get("running") if isinstance(r.get("running"), bool) else None,
        }
        if any(v is not None for v in fields.values()):
            return [tm.detector(node=node, device=device, time_ns=time_ns, **fields)]
    elif driver == "thorlabs_pm100":
        p = _num(r.get("power_w"))
        if p is not None:
            return [
                tm.power_meter(
                    node=node,
                    device=device,
                    power_w=p,
                    wavelength_m=_num(r.get("wavelength_m")),
                    time_ns=time_ns,
                )
            ]
    elif driver == "meadowlark_d3050":
        sp = r.get("setpoints")
        if isinstance(sp, list):
            return [
                tm.polarization(
                    node=node, device=device, axis=k, setpoint=float(v), time_ns=time_ns
                )
                for k, v in enumerate(sp, start=1)
                if _num(v) is not None
            ]
    return []
