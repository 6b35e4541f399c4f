"""Every settable quantity refuses out-of-range values before a byte is sent (hypothesis)."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers import (
    DRIVERS,
    IDQuantiqueID1000,
    Instrument,
    LimitError,
    MeadowlarkD3050,
    control,
)

CONTROLS = [
    (cls, attr, desc)
    for cls in DRIVERS.values()
    for attr, desc in vars(cls).items()
    if isinstance(desc, control)
]
NARROW = {"lo_frac": 0.25, "hi_frac": 0.75}
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e3, max_value=1e3),
    st.floats(min_value=-1e-3, max_value=1e-3),
    st.integers(min_value=-100000, max_value=100000),
)
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def narrowed(cls, key):
    lo, hi = cls.DEFAULT_LIMITS[key]
    span = hi - lo
    return (lo + NARROW["lo_frac"] * span, lo + NARROW["hi_frac"] * span)


def wire_number(fmt: str, command: str) -> float:
    prefix = fmt.split("{")[0]
    assert command.startswith(prefix)
    return float(re.sub(r"[^0-9eE+\-.]", "", command[len(prefix) :]))


@pytest.mark.parametrize(("cls", "attr", "desc"), CONTROLS, ids=lambda x: getattr(x, "__name__", x))
def test_control_never_sends_out_of_range(cls, attr, desc, fake_instrument):
    key = desc.limits_key
    lo, hi = narrowed(cls, key)
    inst, fake = fake_instrument(cls, limits={key: (lo, hi)})
    err = cls.ERROR_QUERY

    @SETTINGS
    @given(v=values)
    def check(v):
        fake.sent.clear()
        inside = math.isfinite(v) and lo <= v <= hi
        if inside and desc.integer and desc.scale == 1.0 and not float(v).is_integer():
            with pytest.raises(LimitError, match="whole number"):  # a count
                setattr(inst, attr, v)
            assert fake.sent == []
            return
        if not inside:
            with pytest.raises(LimitError, match=re.escape(key)):
                setattr(inst, attr, v)
            assert fake.sent == [], "an out-of-range value reached the transport"
            return
        cmd = desc.format(inst, v)
        fake.expect([(cmd, None)] + ([(err, '0,"No error"')] if err else []))
        setattr(inst, attr, v)
        assert fake.sent[0] == (cmd + cls.WRITE_TERMINATION).encode()
        wire = wire_number(desc.set_fmt, cmd) / desc.scale
        tol = 1e-9 * max(abs(lo), abs(hi)) + 1e-6 * abs(wire)
        assert lo - tol <= wire <= hi + tol

    check()


@pytest.mark.parametrize(("cls", "attr", "desc"), CONTROLS, ids=lambda x: getattr(x, "__name__", x))
def test_control_accepts_its_own_reading(cls, attr, desc, fake_instrument):
    """QCoDeS: a value read back from the instrument can be set again unchanged."""
    inst, fake = fake_instrument(cls)
    lo, hi = cls.DEFAULT_LIMITS[desc.limits_key]
    mid = (lo + hi) / 2
    if desc.integer and desc.scale == 1.0:
        mid = float(round(mid))  # a count: whole numbers only
    wire_cmd = desc.format(inst, mid)
    reply = wire_cmd[len(desc.set_fmt.split("{")[0]) :]
    fake.expect([(desc.get_cmd, reply)])
    reading = getattr(inst, attr)
    again = desc.format(inst, reading)
    assert again == wire_cmd


@SETTINGS
@given(element=st.integers(-2, 6), v=values)
def test_d3050_elements(element, v, fake_instrument):
    inst, fake = fake_instrument(MeadowlarkD3050, limits={"element2_voltage_v": (1.0, 4.0)})
    lo, hi = (1.0, 4.0) if element == 2 else (0.0, 10.0)
    ok = 1 <= element <= 4 and math.isfinite(v) and lo <= v <= hi
    if not ok:
        with pytest.raises(LimitError):
            inst.set_voltage(element, v)
        assert fake.sent == []
        return
    cmd = inst.format_setpoint(element, v)
    fake.expect([(cmd, cmd)])
    inst.set_voltage(element, v)
    counts = int(cmd.split(",")[1])
    assert lo - 1e-9 <= counts / 6553.5 <= hi + 1e-9


@SETTINGS
@given(inp=st.integers(-1, 6), v=values)
def test_id1000_threshold(inp, v, fake_instrument):
    inst, fake = fake_instrument(IDQuantiqueID1000, limits={"threshold_v": (-0.5, 0.5)})
    ok = 1 <= inp <= 4 and math.isfinite(v) and -0.5 <= v <= 0.5
    if not ok:
        with pytest.raises(LimitError):
            inst.set_threshold(inp, v)
        assert fake.sent == []
        return
    fake.expect([(f"INPU{inp}:THRE {v:.3f}V", None)])
    inst.set_threshold(inp, v)
    assert -0.5005 <= float(fake.sent[0].decode()[len("INPU1:THRE ") : -2]) <= 0.5005


@SETTINGS
@given(width=st.integers(-5, 2_000_000), count=st.integers(-5, 20000))
def test_id1000_histogram_limits(width, count, fake_instrument):
    inst, fake = fake_instrument(IDQuantiqueID1000)
    if not (1 <= width <= 1e6 and 1 <= count <= 16384):
        with pytest.raises(LimitError):
            inst.configure_histogram(1, width, count)
        assert fake.sent == []
        return
    fake.expect(
        [(f"HIST1:BWID {width}", None), (f"HIST1:BCOU {count}", None), ("HIST1:FLUS", None)]
    )
    inst.configure_histogram(1, width, count)


def test_limit_error_names_instrument_command_and_range(fake_instrument):
    from drivers import ThorlabsCLD1015

    inst, _ = fake_instrument(ThorlabsCLD1015, limits={"current_setpoint_a": (0.0, 0.08)})
    with pytest.raises(LimitError) as info:
        inst.current_setpoint_a = 0.2
    msg = str(info.value)
    assert "dev" in msg and "SOUR1:CURR" in msg and "[0, 0.08]" in msg
    assert isinstance(info.value, ValueError)


def test_unknown_limit_key_is_refused(fake_instrument):
    from drivers import ThorlabsPM100

    with pytest.raises(ValueError, match="'wavelenght_m': not a settable quantity"):
        fake_instrument(ThorlabsPM100, limits={"wavelenght_m": (1e-6, 2e-6)})


@pytest.mark.parametrize("bad", [True, "1.0", None])
def test_non_numbers_are_refused(bad, fake_instrument):
    from drivers import ThorlabsPM100

    inst, fake = fake_instrument(ThorlabsPM100)
    with pytest.raises(LimitError):
        inst.wavelength_m = bad
    assert fake.sent == []


def test_numpy_numbers_are_checked_like_floats(fake_instrument):
    import numpy as np

    from drivers import ThorlabsPM100

    inst, fake = fake_instrument(ThorlabsPM100)
    with pytest.raises(LimitError):
        inst.averages = np.int64(0)
    assert fake.sent == []
    fake.expect([("SENS:AVER:COUN 12", None), ("SYST:ERR?", '0,"No error"')])
    inst.averages = np.int64(12)
    fake.expect([("SENS:CORR:WAV 850.000", None), ("SYST:ERR?", '0,"No error"')])
    inst.wavelength_m = np.float64(850e-9)
    assert not fake.script


@pytest.mark.parametrize("bad", [2, "ON", None, 0.5])
def test_switch_refuses_non_booleans(bad, fake_instrument):
    from drivers import ThorlabsCLD1015

    inst, fake = fake_instrument(ThorlabsCLD1015)
    with pytest.raises(TypeError, match="laser_on"):
        inst.laser_on = bad
    assert fake.sent == []


# -- limits capped by the hardware ----------------------------------------------------------


@pytest.mark.parametrize("cls", list(DRIVERS.values()), ids=lambda c: c.__name__)
def test_defaults_lie_inside_the_hardware_range(cls):
    """Every settable quantity has a hardware range and a default inside it (same keys)."""
    if not issubclass(cls, Instrument):
        pytest.skip("not an instrument with settings")
    hw = cls.hardware_limits()
    assert set(cls.DEFAULT_LIMITS) == set(hw), cls
    for key, (lo, hi) in cls.DEFAULT_LIMITS.items():
        assert hw[key][0] <= lo <= hi <= hw[key][1], (cls, key)
    keys = {d.limits_key for d in vars(cls).values() if isinstance(d, control)}
    assert keys <= set(hw), (cls, keys - set(hw))


@pytest.mark.parametrize(
    ("cls", "key", "pair", "value", "bound"),
    [
        # the reported cases: 5 A on a 1.5 A controller, 1 mA on a 30 uA SNSPD bias
        ("ThorlabsCLD1015", "current_setpoint_a", (0.0, 5.0), "max 5 A", "maximum 1.5 A"),
        ("Keithley2400", "bias_current_a", (0.0, 1e-3), "max 1 mA", "maximum 30 uA"),
        ("IDQuantiqueID120", "threshold_v", (-0.5, 0.5), "min -500 mV", "minimum 0 V"),
    ],
)
def test_limits_above_the_hardware_are_refused_before_any_byte(cls, key, pair, value, bound):
    import drivers
    from tests.drivers.conftest import FakeTransport

    klass = getattr(drivers, cls)
    fake = FakeTransport("dev", klass.WRITE_TERMINATION, klass.READ_TERMINATION)
    with pytest.raises(ValueError) as info:
        klass("dev", fake, limits={key: pair})
    msg = str(info.value)
    assert key in msg and value in msg and f"{klass.MODEL} hardware {bound}" in msg, msg
    assert fake.sent == [] and not fake.is_open


@pytest.mark.parametrize(
    ("cls", "attr", "value"),
    [
        # no configured limit: the conservative default refuses what the hardware would take
        ("Keithley2400", "bias_current_a", 5e-4),
        ("Keithley2400", "bias_current_a", 25e-6),
        ("ThorlabsCLD1015", "current_setpoint_a", 1.2),
        ("IDQuantiqueID120", "threshold_v", 0.9),
    ],
)
def test_unconfigured_settings_get_the_conservative_default(cls, attr, value, fake_instrument):
    import drivers

    inst, fake = fake_instrument(getattr(drivers, cls))
    with pytest.raises(LimitError, match=attr):
        setattr(inst, attr, value)
    assert fake.sent == []


def test_a_configured_limit_inside_the_hardware_widens_the_default(fake_instrument):
    from drivers import Keithley2400

    inst, fake = fake_instrument(Keithley2400, limits={"bias_current_a": (0.0, 25e-6)})
    fake.expect([(":SOUR:CURR 2.500000E-05", None), (":SYST:ERR?", '0,"No error"')])
    inst.bias_current_a = 25e-6
    assert not fake.script


def test_d3050_elements_take_the_common_range_unless_configured(fake_instrument):
    limits = {"element_voltage_v": (1.0, 4.0), "element2_voltage_v": (2.0, 8.0)}
    eff = MeadowlarkD3050.effective_limits(limits)
    assert eff["element1_voltage_v"] == (1.0, 4.0) and eff["element2_voltage_v"] == (2.0, 4.0)
    with pytest.raises(ValueError, match="does not overlap"):
        fake_instrument(
            MeadowlarkD3050, limits={"element_voltage_v": (1, 4), "element3_voltage_v": (5, 8)}
        )
