"""A flood of valid commands neither faults a healthy instrument nor blinds its interlock.

Reproduces the reported flood (valid ``set`` commands as fast as the broker takes them,
here 2000, through a real mosquitto into the in-process daemon) against an emulated laser
that takes 30 ms per exchange. Before: the laser faulted on "call timed out" (queue
waiting counted as device time), most requests came back ``device_unavailable``, its TEC
was not polled for seconds, and aiomqtt warned about pending publishes on every reply.
"""

from __future__ import annotations

import pytest

from controller.testing import servers
from controller.testing.flood import command_flood

pytestmark = [pytest.mark.servers, pytest.mark.timeout(300)]


def test_flood_of_valid_commands(tmp_path):
    servers.require("mosquitto")
    poll_s = 0.2
    r = command_flood(tmp_path, n=2000, latency_s=0.03, poll_interval_s=poll_s)
    # every request got exactly one reply
    assert r["unanswered"] == 0 and r["answered_twice"] == 0, r
    assert sum(r["codes"].values()) == 2000, r
    # the flood was refused politely, never by faulting the device
    assert set(r["codes"]) <= {"ok", "rate_limited", "busy"}, r
    assert r["codes"].get("rate_limited", 0) > 0 and r["codes"].get("ok", 0) > 0, r
    assert r["faults"] == 0 and r["device_state"] == "ready", r
    # the interlock's input kept being polled: no gap over 5 poll intervals
    assert r["max_poll_gap_s"] < 5 * poll_s, r
    assert r["pending_publish_warnings"] == 0, r
