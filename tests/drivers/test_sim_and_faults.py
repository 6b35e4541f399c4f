"""Drivers against their emulators over real TCP sockets and pyvisa-sim; fault injection."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

from drivers import (
    ConnectionLost,
    FileReplaySource,
    IdentityMismatch,
    InstrumentError,
    InstrumentTimeout,
    ReconnectPolicy,
    UnexpectedReply,
    VisaTransport,
    make_instrument,
)
from drivers.sim.instruments import (
    CLD1015Emulator,
    D3050Emulator,
    ID120Emulator,
    ID1000Emulator,
    Keithley2400Emulator,
    PM100Emulator,
)

FAST = ReconnectPolicy(initial_s=0.05, max_s=0.2)


def visa(server, driver, **kw):
    return make_instrument(
        driver,
        driver,
        f"TCPIP::127.0.0.1::{server.port}::SOCKET",
        timeout_s=0.3,
        reconnect=FAST,
        **kw,
    )


def serial(server, driver, **kw):
    return make_instrument(
        driver, driver, f"socket://127.0.0.1:{server.port}", timeout_s=0.5, reconnect=FAST, **kw
    )


def test_laser_against_emulator(serve):
    emu = CLD1015Emulator()
    laser = visa(serve(emu), "thorlabs_cld1015")
    laser.connect()
    laser.current_setpoint_a = 0.07
    laser.tec_temperature_setpoint_c = 22.0
    laser.tec_on = True
    laser.laser_on = True
    assert emu.current_setpoint_a == pytest.approx(0.07) and emu.output_on
    assert laser.readings() == {
        "laser_on": True,
        "current_a": pytest.approx(0.07),
        "tec_temperature_c": pytest.approx(22.0),
        "interlock_ok": True,
    }
    emu.interlock_closed = False
    assert laser.interlock_tripped and laser.current_a == 0.0
    laser.close()


def test_smu_latch_and_reset(serve):
    emu = Keithley2400Emulator()
    smu = visa(serve(emu), "keithley_2400", options={"reset_wait_s": 0.0, "ramp_step_s": 0.0})
    smu.connect()
    smu.bias_current_a = 15e-6
    smu.output_on = True
    assert not smu.latched()
    with emu.lock:
        emu.latched = True
    assert smu.voltage_v == pytest.approx(0.15)
    assert smu.latched()
    assert smu.reset_latch() is True
    assert emu.bias_current_a == pytest.approx(15e-6) and not emu.latched
    smu.close()


def test_spad_power_meter_polarization(serve):
    spad_emu, pm_emu, pc_emu = (
        ID120Emulator(read_count_rate_hz=lambda: 4321.0),
        PM100Emulator(lambda: 3e-6),
        D3050Emulator(),
    )
    spad = serial(serve(spad_emu), "idq_id120")
    pm = visa(serve(pm_emu), "thorlabs_pm100")
    pc = serial(serve(pc_emu), "meadowlark_d3050")
    for d in (spad, pm, pc):
        d.connect()
    spad.dead_time_s = 100e-9
    spad.bias_v = 160.0
    assert spad.count_rate_hz == 4321  # a round trip: the sets before it were handled
    assert spad_emu.dead_time_s == pytest.approx(100e-9)
    pm.wavelength_m = 1310e-9
    pm.averages = 20
    assert pm_emu.wavelength_m == pytest.approx(1310e-9) and pm.power_w == pytest.approx(3e-6)
    pc.setpoints = [1.0, 2.0, 3.0, 4.0]
    assert pc_emu.setpoints == pytest.approx([1.0, 2.0, 3.0, 4.0], abs=1e-4)
    assert pc.voltage(3) == pytest.approx(3.0, abs=1e-4)
    for d in (spad, pm, pc):
        d.close()


def test_time_tagger_counters_histogram_and_stream(serve):
    emu = ID1000Emulator(read_histogram=lambda h, w, n: list(range(n)))
    srv = serve(emu)
    tt = visa(srv, "idq_id1000", options={"stream_port": srv.stream_port})
    tt.connect()
    tt.set_threshold(2, -0.3)
    assert tt.threshold(2) == pytest.approx(-0.3)
    assert emu.thresholds_v[1] == pytest.approx(-0.3)
    tt.configure_histogram(1, 20, 8)
    assert tt.histogram(1).tolist() == list(range(8))
    with tt.tag_source() as src:
        tt.set_streaming(True, (1, 2))
        batches = []
        while len(batches) < 3:
            b = src.read(1.0)
            if b.duration_ps:
                batches.append(b)
        assert all(b.begin_ps == a.end_ps for a, b in itertools.pairwise(batches))
        assert all(set(np.unique(b.channels)) <= {0, 1} for b in batches)
        assert sum(len(b) for b in batches) > 0
    tt.close()


@pytest.mark.parametrize(
    ("yaml", "driver", "port"),
    [
        ("thorlabs_cld1015", "thorlabs_cld1015", 15101),
        ("keithley_2400", "keithley_2400", 15102),
        ("thorlabs_pm100", "thorlabs_pm100", 15104),
        ("idq_id1000", "idq_id1000", 15106),
    ],
)
def test_pyvisa_sim_definitions(yaml, driver, port):
    inst = make_instrument(
        "sim", driver, f"TCPIP::127.0.0.1::{port}::SOCKET", backend=f"configs/sim/{yaml}.yaml@sim"
    )
    assert inst.connect()
    readings = inst.readings()
    assert readings
    if driver == "thorlabs_cld1015":
        inst.current_setpoint_a = 0.03
        assert inst.current_setpoint_a == pytest.approx(0.03)
    elif driver == "keithley_2400":
        inst.bias_current_a = 8e-6
        assert inst.bias_current_a == pytest.approx(8e-6)
    elif driver == "thorlabs_pm100":
        inst.wavelength_m = 780e-9
        inst.averages = 7
        assert (inst.wavelength_m, inst.averages) == (pytest.approx(780e-9), 7)
    else:
        inst.set_threshold(1, 0.25)
        assert inst.threshold(1) == pytest.approx(0.25)
        assert inst.histogram(1).tolist() == [0, 3, 17, 4, 1]
    inst.close()


# -- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [visa, serial])
def test_timeout_is_bounded(serve, make):
    srv = serve(PM100Emulator())
    pm = make(srv, "thorlabs_pm100")
    pm.connect()
    srv.inject("timeout")
    t0 = time.monotonic()
    with pytest.raises(InstrumentTimeout, match=r"thorlabs_pm100 \['MEAS:POW\?'\]"):
        _ = pm.power_w
    assert time.monotonic() - t0 < 0.5 + 0.5
    srv.restore()
    time.sleep(0.1)
    assert pm.power_w == pytest.approx(1e-6)


def test_garbage_is_unexpected_reply(serve):
    srv = serve(PM100Emulator())
    pm = visa(srv, "thorlabs_pm100")
    pm.connect()
    srv.inject("garbage")
    with pytest.raises(UnexpectedReply, match="MEAS:POW"):
        _ = pm.power_w
    srv.restore()
    assert pm.power_w == pytest.approx(1e-6)


@pytest.mark.parametrize(("late_s", "ok"), [(0.05, True), (0.9, False)])
def test_late_reply(serve, late_s, ok):
    srv = serve(PM100Emulator())
    pm = serial(srv, "thorlabs_pm100")
    pm.connect()
    srv.inject("late", late_s=late_s)
    if ok:
        assert pm.power_w == pytest.approx(1e-6)
    else:
        with pytest.raises(InstrumentTimeout):
            _ = pm.power_w
        srv.restore()
        time.sleep(0.7)
        assert pm.power_w == pytest.approx(1e-6)  # the stale late reply was not taken


def test_wrong_identity_is_refused(serve):
    srv = serve(PM100Emulator())
    laser = make_instrument(
        "pump", "thorlabs_cld1015", f"TCPIP::127.0.0.1::{srv.port}::SOCKET", timeout_s=1.0
    )
    with pytest.raises(IdentityMismatch, match=r"pump.*CLD1015.*PM100D"):
        laser.connect()
    assert not laser.connected


@pytest.mark.parametrize("make", [visa, serial])
def test_power_cycle_mid_poll_reconnects(serve, make):
    pm_srv, other_srv = serve(PM100Emulator()), serve(CLD1015Emulator())
    pm = make(pm_srv, "thorlabs_pm100")
    other = visa(other_srv, "thorlabs_cld1015")
    pm.connect()
    other.connect()
    other_session = other.transport._res
    results, errors, stop = [], [], threading.Event()

    def poll():
        while not stop.is_set():
            try:
                results.append(pm.power_w)
            except InstrumentError as exc:
                errors.append(exc)
            time.sleep(0.01)

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.15)
    pm_srv.inject("disconnect")
    time.sleep(0.6)
    n_before = len(results)
    pm_srv.restore()
    deadline = time.monotonic() + 10
    while len(results) <= n_before + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    t.join(5)
    assert not t.is_alive()
    assert any(isinstance(e, ConnectionLost) for e in errors)
    assert len(results) > n_before, "polling did not carry on after the power cycle"
    assert pm.reconnects >= 1 and pm.identity.startswith("Thorlabs,PM100D")
    idn_after = [line for _, line in list(pm_srv.received) if line == "*IDN?"]
    assert len(idn_after) >= 2  # identity re-verified on reconnect
    assert other.transport._res is other_session and other.laser_on is False


def test_threads_never_interleave(serve):
    emu = CLD1015Emulator()
    emu.current_setpoint_a = 0.01
    emu.tec_setpoint_c = 23.0
    laser = visa(serve(emu), "thorlabs_cld1015")
    laser.connect()
    bad = []

    def hammer(get, want):
        for _ in range(60):
            v = get()
            if v != pytest.approx(want):
                bad.append(v)

    ts = [
        threading.Thread(target=hammer, args=(lambda: laser.current_setpoint_a, 0.01)),
        threading.Thread(target=hammer, args=(lambda: laser.tec_temperature_setpoint_c, 23.0)),
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert bad == []
    assert len(emu.commands) >= 121


def test_replay_source_from_npz(tmp_path):
    ts = np.array([5, 15, 25, 35, 95], dtype=np.int64)
    ch = np.array([0, 1, 0, 1, 0], dtype=np.uint8)
    np.savez(tmp_path / "t.npz", timestamps=ts, channels=ch, begin_ps=0, end_ps=100)
    src = FileReplaySource(tmp_path / "t.npz", n_channels=2, batch_duration_ps=30)
    out = []
    while (b := src.read(0.1)) is not None:
        out.append(b)
    assert [(b.begin_ps, b.end_ps) for b in out] == [(0, 30), (30, 60), (60, 90), (90, 100)]
    assert np.concatenate([b.timestamps for b in out]).tolist() == ts.tolist()


def test_swabian_adapter_skips_without_sdk():
    pytest.importorskip("TimeTagger")
    from drivers import SwabianTagSource

    assert SwabianTagSource is not None


def test_visa_transport_unreachable_is_connection_lost():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        inst = make_instrument(
            "ghost", "thorlabs_pm100", f"TCPIP::127.0.0.1::{port}::SOCKET", timeout_s=0.2
        )
        assert isinstance(inst.transport, VisaTransport)
        with pytest.raises(ConnectionLost, match="ghost"):
            inst.connect()


def test_visa_timeout_is_not_a_hang_up_unless_the_socket_says_so():
    import socket
    from types import SimpleNamespace

    import pyvisa

    t = VisaTransport("pm", "TCPIP::127.0.0.1::1::SOCKET", backend="@ivi")
    timeout = pyvisa.errors.VisaIOError(pyvisa.constants.StatusCode.error_timeout)
    try:
        # NI-VISA's library object has no ``sessions``: nothing to inspect, a timeout stays one
        t._res = SimpleNamespace(visalib=SimpleNamespace(), session=1)
        err = t._map(timeout, "MEAS:POW?")
        assert isinstance(err, InstrumentTimeout) and "no reply within" in str(err)
        t._res = SimpleNamespace(visalib=SimpleNamespace(sessions={}), session=1)  # unknown
        assert isinstance(t._map(timeout, "MEAS:POW?"), InstrumentTimeout)
        a, b = socket.socketpair()
        with a, b:
            t._res = SimpleNamespace(
                visalib=SimpleNamespace(sessions={1: SimpleNamespace(interface=a)}), session=1
            )
            assert isinstance(t._map(timeout, "MEAS:POW?"), InstrumentTimeout)  # open, quiet
            b.close()  # the instrument hangs up
            err = t._map(timeout, "MEAS:POW?")
            assert isinstance(err, ConnectionLost) and "closed by the instrument" in str(err)
    finally:
        t._res = None


def test_reconnects_counts_reopens_not_the_first_connection(serve):
    srv = serve(PM100Emulator())
    lazy = visa(srv, "thorlabs_pm100")
    assert lazy.power_w == pytest.approx(1e-6)  # first connection made on demand
    assert lazy.reconnects == 0
    pm = visa(srv, "thorlabs_pm100")
    pm.reconnect()  # the supervisor's first connection goes through reconnect()
    assert pm.reconnects == 0
    pm.reconnect()
    assert pm.reconnects == 1
    srv.inject("disconnect")
    with pytest.raises(ConnectionLost):
        pm.power_w  # noqa: B018 - the read is the point
    srv.restore()
    deadline = time.monotonic() + 5
    while True:
        try:
            pm.power_w  # noqa: B018 - reconnects after the backoff
            break
        except InstrumentError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert pm.reconnects == 2
    lazy.close()
    pm.close()


def test_replay_source_refuses_a_missing_or_foreign_file_at_once(tmp_path):
    import re

    from coincidence import TagFileError

    missing = tmp_path / "missing.npz"
    with pytest.raises(TagFileError, match=re.escape(f"{missing}: no such file")):
        FileReplaySource(missing, n_channels=2)
    foreign = tmp_path / "foreign.npz"
    foreign.write_bytes(b"this is not a zip archive")
    with pytest.raises(TagFileError, match=re.escape(f"{foreign}: not an npz file")):
        FileReplaySource(foreign, n_channels=2)
    ptu = tmp_path / "foreign.ptu"
    ptu.write_bytes(b"garbage " * 8)
    with pytest.raises(TagFileError, match=re.escape(str(ptu))):
        FileReplaySource(ptu, n_channels=2)
    csv = tmp_path / "tags.csv"
    csv.write_text("5,0\n")
    with pytest.raises(TagFileError, match="unknown tag file type"):
        FileReplaySource(csv, n_channels=2)


def test_restore_right_after_a_disconnect_gets_the_same_port_back(serve):
    """The accept thread still polls the old listener; restore() must not find the port taken."""
    srv = serve(PM100Emulator())
    port = srv.port
    pm = visa(srv, "thorlabs_pm100")
    for _ in range(20):
        srv.inject("disconnect")
        srv.restore()  # no pause: the race this pins
        assert srv.port == port
    pm.reconnect()
    assert pm.power_w == pytest.approx(1e-6)
    pm.close()


def test_free_port_never_hands_a_port_out_twice():
    """A config takes several ports before any is bound: each must be its own."""
    from drivers.sim import free_port

    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
    assert all(20000 <= p < 32000 for p in ports)
