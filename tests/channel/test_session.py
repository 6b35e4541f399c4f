"""The sans-I/O session: exactly once, in order, across drops; replays and gaps refused."""

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channel import (
    Ack,
    Acknowledged,
    ChannelError,
    ChannelFullError,
    ChannelSession,
    Delivered,
    OutOfOrderError,
    PeerHello,
    Refused,
    ReplayError,
    TimeBasisEpoch,
    TypedPayload,
    encode_frame,
    link_id_of,
)

LINK = link_id_of("alice-bob")


def epoch(e: int) -> TimeBasisEpoch:
    return TimeBasisEpoch(e, 0, 10**6, 1, np.array([e, e + 10]), np.array([0, 1]))


def delivered(events):
    return [ev.message for ev in events if isinstance(ev, Delivered)]


def test_in_order_delivery_and_acknowledgement():
    a, b = ChannelSession(LINK), ChannelSession(LINK)
    got = []
    for e in range(5):
        got += delivered(b.receive(a.send(epoch(e))))
    assert [m.epoch for m in got] == [0, 1, 2, 3, 4]
    (ack,) = b.outgoing()  # one coalesced acknowledgement
    assert a.receive(ack) == [Acknowledged(5)]
    assert a.unacked == 0


def test_replay_refused_counted_and_link_carries_on():
    a, b = ChannelSession(LINK), ChannelSession(LINK)
    f1 = a.send(epoch(1))
    b.receive(f1)
    (ev,) = b.receive(f1)
    assert isinstance(ev, Refused) and isinstance(ev.error, ReplayError)
    assert "already delivered" in str(ev.error)
    assert b.counters["replayed"] == 1
    assert [m.epoch for m in delivered(b.receive(a.send(epoch(2))))] == [2]


def test_epoch_numbered_twice_is_still_refused():
    """A sender bug that sends an epoch again under a new number: refused, not sifted twice."""
    a, b = ChannelSession(LINK), ChannelSession(LINK)
    b.receive(a.send(epoch(4)))
    (ev,) = b.receive(a.send(epoch(4)))
    assert isinstance(ev, Refused) and "epoch 4 was already delivered" in str(ev.error)
    assert delivered(b.receive(a.send(epoch(5))))[0].epoch == 5


def test_out_of_order_refused_then_resumed():
    a, b = ChannelSession(LINK), ChannelSession(LINK)
    f1, f2, f3 = (a.send(epoch(e)) for e in (1, 2, 3))
    (ev,) = b.receive(f2)
    assert isinstance(ev, Refused) and isinstance(ev.error, OutOfOrderError)
    b.receive(f3)
    assert b.counters["out_of_order"] == 2
    out = b.outgoing()  # one resume request (HELLO 1), not one per refused frame
    assert len(out) == 1
    events = a.receive(out[0])
    assert events == [PeerHello(1)]
    got = []
    for f in a.outgoing():
        got += delivered(b.receive(f))
    assert [m.epoch for m in got] == [1, 2, 3]
    del f1


def test_foreign_and_garbage_counted():
    a, b = ChannelSession(LINK), ChannelSession(LINK)
    other = ChannelSession(link_id_of("carol-dave"))
    (ev,) = b.receive(other.send(epoch(1)))
    assert isinstance(ev, Refused) and ev.error.kind == "foreign"
    (ev,) = b.receive(b"\x00" * 3)
    assert ev.error.kind == "truncated"
    assert dict(b.counters) == {"foreign": 1, "truncated": 1}
    assert delivered(b.receive(a.send(epoch(1))))


def test_bad_acknowledgement_refused():
    a, b = ChannelSession(LINK), ChannelSession(LINK)
    a.send(epoch(1))

    (ev,) = a.receive(encode_frame(Ack(5), LINK, 0))
    assert ev.error.kind == "bad_ack"
    assert a.unacked == 1
    del b


def test_backpressure_limit():
    a = ChannelSession(LINK, max_unacked=2)
    a.send(epoch(1))
    a.send(epoch(2))
    with pytest.raises(ChannelFullError, match="2 messages await"):
        a.send(epoch(3))
    with pytest.raises(ChannelError, match="control messages"):
        from channel import Hello

        a.send(Hello(1))


class LossyLink:
    """Frames in flight both ways; a drop loses everything in flight and both ends reconnect."""

    def __init__(self, seed: int, p_drop_frame: float, p_disconnect: float) -> None:
        self.rng = random.Random(seed)
        self.p_drop_frame = p_drop_frame
        self.p_disconnect = p_disconnect
        self.a, self.b = ChannelSession(LINK), ChannelSession(LINK)
        self.to_b: list[bytes] = []
        self.to_a: list[bytes] = []
        self.got_b: list[int] = []
        self.got_a: list[int] = []

    def step(self) -> None:
        if self.rng.random() < self.p_disconnect:
            self.to_a.clear()
            self.to_b.clear()
            # the client sees the new connection, says HELLO; the server answers with its own
            self.to_b += self.a.connected()
            return
        if self.to_b:
            f = self.to_b.pop(0)
            if self.rng.random() >= self.p_drop_frame:
                for ev in self.b.receive(f):
                    if isinstance(ev, Delivered):
                        assert isinstance(ev.message, TimeBasisEpoch)
                        self.got_b.append(ev.message.epoch)
                        self.b.send(TypedPayload("reply", ev.message.epoch))
                    if isinstance(ev, PeerHello):
                        self.to_a += self.b.outgoing() + self.b.hello()
        self.to_a += self.b.outgoing()
        if self.to_a:
            f = self.to_a.pop(0)
            if self.rng.random() >= self.p_drop_frame:
                for ev in self.a.receive(f):
                    if isinstance(ev, Delivered):
                        assert isinstance(ev.message, TypedPayload)
                        self.got_a.append(ev.message.epoch)
        self.to_b += self.a.outgoing()

    def timer(self) -> None:
        self.to_b += self.a.resend_oldest()
        self.to_a += self.b.resend_oldest()


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 10**6),
    st.floats(0.0, 0.3),
    st.floats(0.0, 0.1),
)
def test_exactly_once_in_order_over_a_lossy_reconnecting_link(seed, p_drop, p_disc):
    link = LossyLink(seed, p_drop, p_disc)
    n = 30
    link.to_b += link.a.connected()
    for e in range(n):
        link.to_b.append(link.a.send(epoch(e)))
        for _ in range(3):
            link.step()
    for i in range(20_000):
        if link.a.unacked == 0 and link.b.unacked == 0 and len(link.got_a) == n:
            break
        link.step()
        if i % 50 == 49:
            link.timer()
    assert link.got_b == list(range(n))  # every epoch once, in order
    assert link.got_a == list(range(n))  # every reply once, in order
    assert link.a.unacked == 0 and link.b.unacked == 0


def test_peer_restart_renumbers_and_no_epoch_is_delivered_twice():
    a, b = ChannelSession(LINK), ChannelSession(LINK)
    for f in a.connected():
        b.receive(f)
    for f in b.outgoing() + b.hello():
        a.receive(f)
    got = []
    for e in range(5):
        got += delivered(b.receive(a.send(epoch(e))))
    # b acknowledged only up to epoch 2 before it crashed
    a.receive(encode_frame(Ack(3), LINK, 0))
    assert a.unacked == 2
    b2 = ChannelSession(LINK, last_epochs=b.last_epochs)  # restarted, epoch record restored
    f_new = a.send(epoch(5))
    del f_new  # lost with the old connection
    for f in a.connected():
        b2.receive(f)
    for f in b2.outgoing() + b2.hello():
        a.receive(f)  # a sees a new session: renumbers 4, 5 (and 6) from 1 and resends
    assert a.counters["peer_restarts"] == 1
    for f in a.outgoing():
        got += delivered(b2.receive(f))
    assert [m.epoch for m in got] == [0, 1, 2, 3, 4, 5]  # 3 and 4 refused by epoch, 5 once
    assert b2.counters["replayed"] == 2
    for f in b2.outgoing():
        a.receive(f)
    assert a.unacked == 0
