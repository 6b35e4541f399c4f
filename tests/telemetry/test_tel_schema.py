"""The record schema, its constructor helpers, and the line-protocol codec."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import telemetry
from telemetry import (
    MEASUREMENTS,
    LineProtocolError,
    Record,
    SchemaError,
    parse_lines,
    to_line,
    to_lines,
    validate,
)
from telemetry._schema import parse_line, parse_telemetry_topic, with_seq

T = 1_700_000_000_123_456_789


def one_of_each() -> list[Record]:
    n = "alice"
    return [
        telemetry.link(
            node=n,
            link="ab",
            role="analyser",
            lock_state="locked",
            offset_ps=3.0e11,
            ppm=40.0,
            epochs=12,
            secret_bps=2048.0,
            ec_efficiency=float("nan"),
            channel_connected=True,
            time_ns=T,
        ),
        telemetry.singles(node=n, channel=3, counts=1200, rate_hz=1200.0, time_ns=T),
        telemetry.coincidences(
            node=n,
            link="ab",
            channel_a=1,
            channel_b=5,
            counts=40,
            accidentals=0.5,
            car=80.0,
            window_ps=500,
            time_ns=T,
        ),
        telemetry.qber(node=n, link="ab", basis="z", qber=0.021, errors=21, sifted=1000, time_ns=T),
        telemetry.key_rate(node=n, link="ab", sifted_bps=1e4, secure_bps=3e3, time_ns=T),
        telemetry.laser(
            node=n,
            device="pump",
            current_a=0.05,
            temperature_k=298.15,
            power_w=0.01,
            output_on=True,
            time_ns=T,
        ),
        telemetry.detector(
            node=n,
            device="snspd",
            channel=1,
            bias_current_a=12e-6,
            temperature_k=2.5,
            state="armed",
            armed=True,
            time_ns=T,
        ),
        telemetry.power_meter(node=n, device="pm", power_w=1e-6, wavelength_m=1550e-9, time_ns=T),
        telemetry.polarization(
            node=n, device="epc", axis=0, setpoint=1.2, readback=1.19, time_ns=T
        ),
        telemetry.health(
            node=n, device="pump", ok=False, state="fault", message='say "hi"\\', time_ns=T
        ),
        telemetry.interlock(
            node=n,
            interlock="laser_temp",
            active=True,
            event="trip",
            reason="T > 310 K",
            time_ns=T,
        ),
    ]


def test_every_measurement_has_a_helper_and_round_trips():
    recs = one_of_each()
    names = {r.measurement for r in recs}
    assert names == set(MEASUREMENTS) - {"telemetry"}
    for r in recs:
        assert "node" in r.tags and r.time_ns == T
        back = parse_lines(to_line(r))
        assert back == [r], to_line(r)


def test_line_protocol_format_is_stock_influx():
    r = telemetry.laser(node="alice", device="pump 1", current_a=0.05, output_on=False, time_ns=T)
    line = to_line(with_seq(r, 7))
    assert line == f"laser,device=pump\\ 1,node=alice current_a=0.05,output_on=false,seq=7i {T}"


def test_numbers_meant_as_floats_stay_floats():
    r = telemetry.singles(node="a", channel=1, counts=5, rate_hz=5, time_ns=T)
    assert isinstance(r.fields["rate_hz"], float)
    assert "rate_hz=5.0" in to_line(r)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: telemetry.singles(node="a", channel=1, counts=1.5, time_ns=T), "counts"),
        (lambda: telemetry.singles(node="a", channel=1, counts=True, time_ns=T), "counts"),
        (lambda: telemetry.singles(node="a", channel=1, counts=1, time_ns=-1), "time_ns"),
        (lambda: telemetry.singles(node="a", channel=1, counts=1, time_ns=1.0), "time_ns"),
        (lambda: telemetry.singles(node="", channel=1, counts=1, time_ns=T), "node"),
        (lambda: telemetry.qber(node="a", link="l", basis="z", qber=math.nan, time_ns=T), "finite"),
        (lambda: validate(Record("singles", {"node": "a"}, {"counts": 1}, T)), "channel"),
        (
            lambda: validate(
                Record("singles", {"node": "a", "channel": "1", "run": "7"}, {"counts": 1}, T)
            ),
            "run",
        ),
        (lambda: validate(Record("nosuch", {"node": "a"}, {"x": 1}, T)), "nosuch"),
        (
            lambda: validate(Record("singles", {"node": "a", "channel": "1"}, {"rate_hz": 1.0}, T)),
            "counts",
        ),
        (lambda: validate(Record("singles", {"node": "a", "channel": "1"}, {}, T)), "at least one"),
        (
            lambda: validate(
                Record(
                    "health", {"node": "a", "device": "d"}, {"ok": True, "message": "x" * 2000}, T
                )
            ),
            "longer",
        ),
        (
            lambda: telemetry.health(node="a", device="d", ok=True, message="a\nb", time_ns=T),
            "line break",
        ),
    ],
)
def test_bad_records_are_refused_naming_what(make, message):
    with pytest.raises(SchemaError, match=message):
        make()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("singles,node=a,channel=1 counts=1i", "parts"),
        ("singles,node=a,channel=1 counts=1i notatime", "timestamp"),
        ("singles,node=a,channel=1 counts=xyz 1", "bad value"),
        ("singles,node=a,channel=1 counts=1.5 1", "counts"),
        ('health,node=a,device=d ok=true,message="open 1', "unterminated|parts"),
        ("singles,node=a,channel counts=1i 1", "bad tag"),
        ("singles,node=a,channel=1 =1i 1", "bad field"),
        ("singles,node=a,channel=1 counts=1i 1\nsingles,node=a counts=1i 1", "line 2"),
        ("singles,node=a,channel=1 rate_hz=inf,counts=1i 1", "non-finite"),
    ],
)
def test_malformed_line_protocol_is_refused_with_line_number(text, message):
    with pytest.raises(LineProtocolError, match=message):
        parse_lines(text)


_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\\"),
    min_size=1,
    max_size=20,
)


@settings(max_examples=150, deadline=None)
@given(
    device=_text,
    state=st.text(max_size=30).filter(lambda s: "\r" not in s and "\n" not in s),
    errors=st.integers(-(2**63), 2**63 - 1),
    latency=st.floats(allow_nan=False, allow_infinity=False),
    t=st.integers(0, 2**63 - 1),
)
def test_round_trip_property(device, state, errors, latency, t):
    r = telemetry.health(
        node="n-1", device=device, ok=True, state=state, errors=errors, latency_s=latency, time_ns=t
    )
    line = to_line(r)
    assert "\n" not in line
    assert parse_line(line) == r
    assert parse_lines(line) == [r]


def test_many_records_one_payload():
    recs = one_of_each()
    assert parse_lines(to_lines(recs)) == recs


def test_topics():
    assert telemetry.telemetry_topic("alice", "qber") == "qnet/v1/alice/telemetry/qber"
    assert telemetry.status_topic("alice") == "qnet/v1/alice/status"
    assert telemetry.command_topic("alice", "laser") == "qnet/v1/alice/cmd/laser"
    assert telemetry.reply_topic("alice", "laser") == "qnet/v1/alice/reply/laser"
    assert parse_telemetry_topic("qnet/v1/alice/telemetry/qber") == ("alice", "qber")
    for bad in ("qnet/v1/alice/cmd/x", "qnet/v2/alice/telemetry/q", "qnet/v1/alice/telemetry/q/x"):
        with pytest.raises(ValueError, match="not a telemetry topic"):
            parse_telemetry_topic(bad)


_GOOD = [
    "singles,channel=1,node=a counts=5i,rate_hz=5.0,seq=1i 1000",
    "laser,device=pump,node=a current_a=0.05,output_on=true 1000",
    "qber,basis=z,link=ab,node=a qber=0.02,errors=3i 1000",
]


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from(_GOOD),
    pos=st.integers(0, 80),
    junk=st.sampled_from(["", "x", "=", ",", " ", "i", "1", ".", "e", "-", "inf", "t", '"']),
    cut=st.booleans(),
)
def test_payload_checker_agrees_with_full_parser(base, pos, junk, cut):
    """The bridge's fast checker accepts exactly what parse_lines + validate accept."""
    from telemetry._schema import PayloadChecker

    line = base[:pos] + junk + base[pos + (1 if cut else 0) :]
    text = base + "\n" + line  # the first line warms the series cache
    try:
        expected = parse_lines(text)
    except LineProtocolError:
        expected = None
    checker = PayloadChecker()
    meas, node = "", ""
    if expected is not None:
        meas, node = expected[1].measurement, expected[1].tags["node"]
        if expected[0].measurement != meas or expected[0].tags["node"] != node:
            return
    try:
        n = checker.check(text, meas or base.split(",")[0], node or "a")
    except LineProtocolError:
        n = None
    if expected is None:
        assert n is None, f"fast checker accepted {line!r}"
    else:
        assert n == 2, f"fast checker refused {line!r}"
