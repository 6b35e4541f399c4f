"""ZeroMQ SCPI transport (the ID1000's documented one) and tag-stream framing faults."""

from __future__ import annotations

import logging
import socket
import threading
import time

import numpy as np
import pytest

from coincidence import TagBatch
from drivers import (
    ConnectionLost,
    IDQTagStream,
    InstrumentTimeout,
    ReconnectPolicy,
    UnexpectedReply,
    encode_frame,
    make_instrument,
)
from drivers._tagframes import end_frame
from drivers.sim.instruments import ID1000Emulator, PM100Emulator


def test_id1000_over_zmq():
    pytest.importorskip("zmq")
    from drivers.sim.zmq_server import ZmqInstrumentServer

    emu = ID1000Emulator(read_counts=lambda: [7, 8, 9, 10])
    srv = ZmqInstrumentServer(emu).start()
    try:
        tt = make_instrument(
            "tc",
            "idq_id1000",
            f"zmq://127.0.0.1:{srv.port}",
            timeout_s=0.5,
            reconnect=ReconnectPolicy(0.05, 0.2),
        )
        assert tt.connect().startswith("ID Quantique,ID1000")
        assert tt.counters() == [7, 8, 9, 10]
        tt.set_threshold(4, 0.125)
        assert emu.thresholds_v[3] == pytest.approx(0.125)
        srv.inject("timeout")
        t0 = time.monotonic()
        with pytest.raises(InstrumentTimeout, match=r"tc \['INPU1:COUN\?'\]"):
            tt.counter(1)
        assert time.monotonic() - t0 < 1.0
        srv.restore()
        time.sleep(0.1)
        assert tt.counter(2) == 8  # a fresh REQ socket after the timeout
        tt.close()
    finally:
        srv.stop()


class _RawStreamServer:
    """Sends given bytes to the first client, then closes (or not)."""

    def __init__(self, payload: bytes, close: bool = True):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.payload, self.close_after = payload, close
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        conn, _ = self.sock.accept()
        conn.sendall(self.payload)
        if self.close_after:
            conn.close()
        else:
            time.sleep(1.0)
            conn.close()
        self.sock.close()


def _batch(begin, end, ts, ch):
    return TagBatch(np.array(ts, np.int64), np.array(ch, np.uint8), begin, end)


def test_stream_decodes_frames_and_clean_end():
    payload = (
        encode_frame(_batch(0, 100, [5, 50], [0, 3]))
        + encode_frame(_batch(100, 250, [], []))
        + end_frame(250)
    )
    srv = _RawStreamServer(payload)
    src = IDQTagStream("tt", "127.0.0.1", srv.port, 4)
    a, b = src.read(1.0), src.read(1.0)
    assert a.timestamps.tolist() == [5, 50] and a.channels.tolist() == [0, 3]
    assert (b.begin_ps, b.end_ps, len(b)) == (100, 250, 0)
    assert src.read(1.0) is None and src.read(1.0) is None


def test_stream_cut_is_connection_lost():
    srv = _RawStreamServer(encode_frame(_batch(0, 100, [5], [1]))[:-3])
    src = IDQTagStream("tt", "127.0.0.1", srv.port, 4)
    with pytest.raises(ConnectionLost, match=r"tt.*inside a frame"):
        src.read(1.0)


def test_stream_close_without_end_frame_is_connection_lost():
    srv = _RawStreamServer(encode_frame(_batch(0, 100, [5], [1])))
    src = IDQTagStream("tt", "127.0.0.1", srv.port, 4)
    assert len(src.read(1.0)) == 1
    with pytest.raises(ConnectionLost, match="without an end frame"):
        src.read(1.0)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"JUNK" + bytes(20), "bad frame magic"),
        (encode_frame(_batch(0, 100, [], [])) + encode_frame(_batch(150, 200, [], [])), "gap"),
        (encode_frame(_batch(0, 100, [5], [7])), "channel 7"),
    ],
)
def test_stream_garbage_is_refused(payload, match):
    srv = _RawStreamServer(payload, close=False)
    src = IDQTagStream("tt", "127.0.0.1", srv.port, 4)
    with pytest.raises((UnexpectedReply, ValueError), match=match):
        for _ in range(3):
            src.read(0.5)


def test_stream_quiet_returns_empty_batch_within_timeout():
    srv = _RawStreamServer(b"", close=False)
    src = IDQTagStream("tt", "127.0.0.1", srv.port, 4)
    t0 = time.monotonic()
    b = src.read(0.2)
    assert len(b) == 0 and time.monotonic() - t0 < 0.6


def test_traffic_log_has_bytes_both_ways(serve, caplog):
    srv = serve(PM100Emulator())
    pm = make_instrument("pm", "thorlabs_pm100", f"socket://127.0.0.1:{srv.port}", timeout_s=0.5)
    with caplog.at_level(logging.DEBUG, logger="qnet.traffic"):
        pm.connect()
        _ = pm.power_w
    msgs = [r.getMessage() for r in caplog.records if r.name == "qnet.traffic"]
    assert any("pm >> b'MEAS:POW?\\n'" in m for m in msgs)
    assert any("pm << b'1.000000E-06\\n'" in m for m in msgs)


def test_replay_in_memory_paced_and_channel_checked():
    from drivers import FileReplaySource

    batch = _batch(0, 4_000_000_000, [1, 2_000_000_000], [0, 1])  # 4 ms of tags
    src = FileReplaySource(batch, n_channels=2, batch_duration_ps=1_000_000_000, speed=1.0)
    t0 = time.monotonic()
    got = []
    while (b := src.read(1.0)) is not None:
        got.append(b)
    assert len(got) == 4 and sum(len(b) for b in got) == 2
    assert time.monotonic() - t0 >= 0.003  # paced in wall-clock time
    bad = FileReplaySource(batch, n_channels=1)
    with pytest.raises(ValueError, match="channel 1"):
        bad.read()


def test_zmq_transport_refuses_options_it_cannot_honour():
    from drivers import ZmqTransport

    with pytest.raises(TypeError, match="write_termination"):
        ZmqTransport("tc", "zmq://127.0.0.1:5555", write_termination="\r")  # type: ignore[call-arg]
    assert ZmqTransport("tc", "zmq://127.0.0.1:5555", timeout_s=0.25).timeout_s == 0.25
