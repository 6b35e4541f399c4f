"""Exact bytes of every command of every driver (in the spirit of PyMeasure's expected_protocol)."""

from __future__ import annotations

import numpy as np
import pytest

from drivers import (
    IDQuantiqueID120,
    IDQuantiqueID1000,
    InstrumentReportedError,
    Keithley2400,
    LimitError,
    MeadowlarkD3050,
    ThorlabsCLD1015,
    ThorlabsPM100,
    UnexpectedReply,
)

OK = ("SYST:ERR?", '0,"No error"')
K_OK = (":SYST:ERR?", '0,"No error"')


def run(make, cls, pairs, action, **kwargs):
    """Connect ``cls`` on a fake transport, script ``pairs``, run ``action``, check all was sent."""
    inst, fake = make(cls, **kwargs)
    fake.expect(pairs)
    result = action(inst)
    assert not fake.script, f"expected but not sent: {fake.script}"
    return result


@pytest.mark.parametrize(
    ("pairs", "action", "expected"),
    [
        ([("OUTP1:STAT ON", None), OK], lambda d: setattr(d, "laser_on", True), None),
        ([("OUTP1:STAT OFF", None), OK], lambda d: setattr(d, "laser_on", False), None),
        ([("OUTP1:STAT?", "1")], lambda d: d.laser_on, True),
        ([("OUTP2:STAT ON", None), OK], lambda d: setattr(d, "tec_on", True), None),
        ([("OUTP2:STAT?", "0")], lambda d: d.tec_on, False),
        (
            [("SOUR1:CURR 5.000000E-02", None), OK],
            lambda d: setattr(d, "current_setpoint_a", 0.05),
            None,
        ),
        ([("SOUR1:CURR?", "5.000000E-02")], lambda d: d.current_setpoint_a, 0.05),
        ([("MEAS:CURR?", "4.990000E-02")], lambda d: d.current_a, 0.0499),
        (
            [("SOUR2:TEMP 25.500", None), OK],
            lambda d: setattr(d, "tec_temperature_setpoint_c", 25.5),
            None,
        ),
        ([("SOUR2:TEMP?", "25.500")], lambda d: d.tec_temperature_setpoint_c, 25.5),
        ([("MEAS:TEMP?", "25.012")], lambda d: d.tec_temperature_c, 25.012),
        ([("OUTP:PROT:INTL:TRIP?", "1")], lambda d: d.interlock_tripped, True),
        ([("OUTP:PROT:KEYL:TRIP?", "0")], lambda d: d.keylock_tripped, False),
    ],
)
def test_cld1015(pairs, action, expected, fake_instrument):
    assert run(fake_instrument, ThorlabsCLD1015, pairs, action) == expected


@pytest.mark.parametrize(
    ("pairs", "action", "expected"),
    [
        ([(":OUTP ON", None), K_OK], lambda d: setattr(d, "output_on", True), None),
        ([(":OUTP?", "0")], lambda d: d.output_on, False),
        (
            [(":SOUR:CURR 1.200000E-05", None), K_OK],
            lambda d: setattr(d, "bias_current_a", 12e-6),
            None,
        ),
        ([(":SOUR:CURR?", "1.200000E-05")], lambda d: d.bias_current_a, 12e-6),
        ([(":SENS:VOLT:PROT 1.5000", None), K_OK], lambda d: setattr(d, "compliance_v", 1.5), None),
        ([(":SENS:VOLT:PROT?", "1.500000E+00")], lambda d: d.compliance_v, 1.5),
        ([(":READ?", "+2.000000E-03")], lambda d: d.voltage_v, 0.002),
        ([(":READ?", "+1.200000E-01")], lambda d: d.latched(), True),
        ([(":READ?", "+1.000000E-04")], lambda d: d.latched(), False),
    ],
)
def test_keithley(pairs, action, expected, fake_instrument):
    assert run(fake_instrument, Keithley2400, pairs, action) == expected


def test_keithley_reset_sequence(fake_instrument):
    opts = {"reset_wait_s": 0.0, "ramp_step_s": 0.0, "reset_steps": 2}
    pairs = [
        (":SOUR:CURR?", "1.000000E-05"),
        (":SOUR:CURR 0.000000E+00", None),
        K_OK,
        (":SOUR:CURR 5.000000E-06", None),
        K_OK,
        (":SOUR:CURR 1.000000E-05", None),
        K_OK,
        (":READ?", "+0.000000E+00"),
    ]
    assert (
        run(fake_instrument, Keithley2400, pairs, lambda d: d.reset_latch(), options=opts) is True
    )


def test_scpi_error_queue_is_reported_with_the_command(fake_instrument):
    pairs = [(":OUTP ON", None), (":SYST:ERR?", '-222,"Data out of range"'), K_OK]
    with pytest.raises(InstrumentReportedError, match=r":OUTP ON.*-222"):
        run(fake_instrument, Keithley2400, pairs, lambda d: setattr(d, "output_on", True))


@pytest.mark.parametrize(
    ("pairs", "action", "expected"),
    [
        ([("BIAS:VOLTAGE 150000000", None)], lambda d: setattr(d, "bias_v", 150.0), None),
        ([("BIAS:VOLTAGE?", "150000000")], lambda d: d.bias_v, 150.0),
        ([("THRESHOLD:VOLTAGE 100000", None)], lambda d: setattr(d, "threshold_v", 0.1), None),
        ([("DEADTIME:TIME 50", None)], lambda d: setattr(d, "dead_time_s", 50e-9), None),
        ([("DEADTIME:TIME?", "1000")], lambda d: d.dead_time_s, 1e-6),
        (
            [("REG:TEMP_SET_POINT -40000", None)],
            lambda d: setattr(d, "temperature_setpoint_c", -40.0),
            None,
        ),
        ([("REG:TEMP_SET_POINT?", "-40000")], lambda d: d.temperature_setpoint_c, -40.0),
        ([("REG:MEASURED_TEMP?", "-39950")], lambda d: d.temperature_c, -39.95),
        (
            [("COUNTERS:INTEGRATION_TIME 1000", None)],
            lambda d: setattr(d, "integration_time_s", 1.0),
            None,
        ),
        ([("COUNTERS:DETECTION_FREQ?", "12345")], lambda d: d.count_rate_hz, 12345),
        ([("REG:RUN TRUE", None)], lambda d: setattr(d, "running", True), None),
        ([("REG:RUN?", "FALSE")], lambda d: d.running, False),
    ],
)
def test_id120(pairs, action, expected, fake_instrument):
    assert run(fake_instrument, IDQuantiqueID120, pairs, action) == expected


@pytest.mark.parametrize(
    ("pairs", "action", "expected"),
    [
        ([("SENS:CORR:WAV 810.000", None), OK], lambda d: setattr(d, "wavelength_m", 810e-9), None),
        ([("SENS:CORR:WAV?", "1550.000")], lambda d: d.wavelength_m, 1550e-9),
        ([("SENS:AVER:COUN 100", None), OK], lambda d: setattr(d, "averages", 100), None),
        ([("SENS:AVER:COUN?", "100")], lambda d: d.averages, 100),
        ([("MEAS:POW?", "1.234000E-06")], lambda d: d.power_w, 1.234e-6),
    ],
)
def test_pm100(pairs, action, expected, fake_instrument):
    got = run(fake_instrument, ThorlabsPM100, pairs, action)
    assert got == pytest.approx(expected) if expected is not None else got is None


@pytest.mark.parametrize(
    ("pairs", "action", "expected"),
    [
        ([("ld:2,21627", "ld:2,21627")], lambda d: d.set_voltage(2, 3.3), None),
        ([("ld:1,?", "ld:1,65535")], lambda d: d.voltage(1), 10.0),
        (
            [("ldd:?", "ldd:0,6554,13107,65535")],
            lambda d: [round(v, 3) for v in d.setpoints],
            [0.0, 1.0, 2.0, 10.0],
        ),
        ([("tmp:?", "tmp:39321")], lambda d: round(d.temperature_k, 2), 300.0),
        (
            [
                ("ld:1,0", "ld:1,0"),
                ("ld:2,6554", "ld:2,6554"),
                ("ld:3,0", "ld:3,0"),
                ("ld:4,65535", "ld:4,65535"),
            ],
            lambda d: setattr(d, "setpoints", [0.0, 1.0, 0.0, 10.0]),
            None,
        ),
    ],
)
def test_d3050(pairs, action, expected, fake_instrument):
    assert run(fake_instrument, MeadowlarkD3050, pairs, action) == expected


def test_d3050_wire_bytes_use_cr(fake_instrument):
    inst, fake = fake_instrument(MeadowlarkD3050)
    fake.expect([("ld:1,?", "ld:1,0")])
    inst.voltage(1)
    assert fake.sent == [b"ld:1,?\r"]


def test_d3050_wrong_echo_is_unexpected(fake_instrument):
    with pytest.raises(UnexpectedReply, match="ld:2,21627"):
        run(
            fake_instrument, MeadowlarkD3050, [("ld:2,21627", "?")], lambda d: d.set_voltage(2, 3.3)
        )


@pytest.mark.parametrize(
    ("pairs", "action", "expected"),
    [
        ([("INPU1:THRE -0.250V", None)], lambda d: d.set_threshold(1, -0.25), None),
        ([("INPU3:THRE?", "0.500V")], lambda d: d.threshold(3), 0.5),
        ([("INPU2:COUN?", "1234")], lambda d: d.counter(2), 1234),
        (
            [
                ("INPU1:COUN?", "1"),
                ("INPU2:COUN?", "2"),
                ("INPU3:COUN?", "3"),
                ("INPU4:COUN?", "4"),
            ],
            lambda d: d.counters(),
            [1, 2, 3, 4],
        ),
        (
            [("HIST2:BWID 50", None), ("HIST2:BCOU 1000", None), ("HIST2:FLUS", None)],
            lambda d: d.configure_histogram(2, 50, 1000),
            None,
        ),
        ([("HIST4:FLUS", None)], lambda d: d.flush_histogram(4), None),
        ([("HIST1:DATA?", "[0,3,17]")], lambda d: d.histogram(1).tolist(), [0, 3, 17]),
        ([("HIST1:DATA?", "[]")], lambda d: d.histogram(1).tolist(), []),
        (
            [("RAW1:SEND ON", None), ("RAW3:SEND ON", None)],
            lambda d: d.set_streaming(True, (1, 3)),
            None,
        ),
        ([("RAW2:SEND OFF", None)], lambda d: d.set_streaming(False, (2,)), None),
    ],
)
def test_id1000(pairs, action, expected, fake_instrument):
    assert run(fake_instrument, IDQuantiqueID1000, pairs, action) == expected


@pytest.mark.parametrize("bad", ["[1,2,", "__import__('os')", "[1.5]", "garbage"])
def test_id1000_histogram_reply_is_parsed_not_evaluated(bad, fake_instrument):
    with pytest.raises(UnexpectedReply, match="HIST1:DATA"):
        run(fake_instrument, IDQuantiqueID1000, [("HIST1:DATA?", bad)], lambda d: d.histogram(1))


@pytest.mark.parametrize("reply", ["abc", "1.0.0", "", "nan"])
def test_unparseable_numbers_raise_unexpected_reply(reply, fake_instrument):
    with pytest.raises(UnexpectedReply, match=r"dev \['MEAS:POW\?'\]"):
        run(fake_instrument, ThorlabsPM100, [("MEAS:POW?", reply)], lambda d: d.power_w)


def test_histogram_is_int_array(fake_instrument):
    h = run(
        fake_instrument, IDQuantiqueID1000, [("HIST1:DATA?", "[5,6]")], lambda d: d.histogram(1)
    )
    assert h.dtype == np.int64


def test_refusals_send_nothing(fake_instrument):
    """A request refused part-way is refused whole: nothing reaches the instrument."""
    tagger, fake = fake_instrument(IDQuantiqueID1000)
    with pytest.raises(LimitError, match=r"input must be an int in 1\.\.4, got 7"):
        tagger.set_streaming(True, (1, 2, 7))
    assert fake.sent == []

    pm, fake = fake_instrument(ThorlabsPM100)
    with pytest.raises(LimitError, match=r"averages must be a whole number, got 2\.5"):
        pm.averages = 2.5
    assert fake.sent == []

    # the bias read back is above the configured range: the reset must not start
    smu, fake = fake_instrument(Keithley2400, limits={"bias_current_a": (0.0, 15e-6)})
    fake.expect([(":SOUR:CURR?", "2.000000E-05")])
    with pytest.raises(LimitError, match="outside the safe range"):
        smu.reset_latch()
    assert fake.sent == [b":SOUR:CURR?\n"]
