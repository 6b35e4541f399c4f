"""The two-site testbed: one `qnet sim --site` process per site, each tagger on its own clock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from coincidence import TagBatch
from controller.simnode import make_link_sites
from drivers import make_instrument
from drivers.sim import free_port
from drivers.sim.sitelink import SiteDownlink, SiteLinkError
from drivers.sim.testbed import Testbed, TestbedConfig, TestbedError

from .conftest import REPO


def link_configs(tmp_path: Path, speed: float = 10.0) -> Path:
    """configs/testbed-link.yaml and its two node configs with free ports, in tmp_path."""
    return make_link_sites(tmp_path, speed=speed)


def _stream(tb: Testbed, name: str):
    spec = tb.config.instruments[name]
    d = make_instrument(
        name, spec.driver, spec.resource, timeout_s=2.0, options={"stream_port": spec.stream_port}
    )
    d.connect()
    d.set_streaming(True)
    return d, d.tag_source()


def _read(src, seconds: float, deadline_s: float = 60.0) -> TagBatch:
    parts: list[TagBatch] = []
    t_end = time.monotonic() + deadline_s
    while sum(b.duration_ps for b in parts) < seconds * 1e12:
        assert time.monotonic() < t_end, "the tag stream stalled"
        b = src.read(timeout_s=1.0)
        if b is not None:
            parts.append(b)
    return TagBatch.concatenate(parts)


def _true_times(tb: Testbed, side: str, ts: np.ndarray) -> np.ndarray:
    """Invert a tagger's clock (offset and rate; the phase noise is a few ps)."""
    c = tb.clocks[side]
    return np.round((ts - c.offset_ps) / (1.0 + c.rate)).astype(np.int64)


@pytest.fixture
def two_sites(tmp_path):
    cfg = TestbedConfig.load(link_configs(tmp_path))
    alice, bob = Testbed(cfg), Testbed(cfg)
    try:
        served_a = alice.serve_site("alice")
        served_b = bob.serve_site("bob")
        alice.start_clock()
        yield alice, bob, served_a, served_b
    finally:
        bob.stop()
        alice.stop()


def test_each_site_serves_its_own_instruments_and_tagger(two_sites):
    """Bob's process streams Bob's photons in Bob's clock, fed by Alice's process; mapped
    back through the two clocks they pair with Alice's at the fibre delay."""
    alice, bob, served_a, served_b = two_sites
    assert set(served_a) == {"pump_laser", "snspd_bias", "power_meter", "alice_tagger"}
    assert set(served_b) == {"spad", "polarization_controller", "bob_tagger"}
    drivers = []
    try:
        da, sa = _stream(alice, "alice_tagger")
        db, sb = _stream(bob, "bob_tagger")
        drivers = [da, db]
        a, b = _read(sa, 1.0), _read(sb, 1.0)
    finally:
        for d in drivers:
            d.close()
    assert len(a) > 10_000 and len(b) > 1_000
    assert a.channels.max() <= 3 and b.channels.max() <= 3
    assert alice.clock_truth(0)["offset_ps"] == -730_000_000_000  # Bob's clock minus Alice's
    fiber = alice.clock_truth(0)["fiber_delay_ps"]
    ta = np.sort(_true_times(alice, "alice", a.timestamps))
    tb = _true_times(alice, "bob", b.timestamps) - int(fiber)
    i = np.clip(np.searchsorted(ta, tb), 1, len(ta) - 1)
    near = np.minimum(np.abs(ta[i] - tb), np.abs(ta[i - 1] - tb))
    paired = float(np.mean(near < 2_000))
    accidental = len(ta) / (a.duration_ps) * 4_000  # chance of a tag within +-2 ns
    assert paired > 0.1 and paired > 20 * accidental


def test_bobs_settings_reach_the_physics_in_alices_process(two_sites):
    alice, bob, _, _ = two_sites
    d, src = _stream(bob, "bob_tagger")
    try:
        _read(src, 0.2)
        bob.set_compensator_voltages([1.0, 2.0, 3.0, 4.0])
        with bob.emulators["spad"].lock:
            bob.emulators["spad"].running = False  # gates Bob's H detector (channel 4)
        _read(src, 0.2)  # the next requests carry the new state
        after = _read(src, 0.5)
    finally:
        d.close()
    assert alice.emulators["polarization_controller"].counts == (
        bob.emulators["polarization_controller"].counts
    )
    assert not alice.emulators["spad"].running
    assert np.count_nonzero(after.channels == 0) == 0 and np.count_nonzero(after.channels) > 100
    # and the readings Bob's instruments report come from the physics in Alice's process
    assert bob.expected_rates()["singles_hz"][5] == pytest.approx(
        alice.expected_rates()["singles_hz"][5]
    )


def test_bob_without_alice_gets_a_clear_error(tmp_path):
    link = SiteDownlink(f"tcp://127.0.0.1:{free_port()}", timeout_s=0.3)
    try:
        with pytest.raises(SiteLinkError, match=r"did not answer within 0\.3 s"):
            link.take(10**10, {})
    finally:
        link.close()


def test_uplink_refuses_bad_requests_and_carries_on(two_sites):
    alice, _, _, _ = two_sites
    link = SiteDownlink(alice.config.site_link, timeout_s=5.0)
    try:
        with pytest.raises(SiteLinkError, match="unknown instrument"):
            link.take(10**10, {"carol": {}})
        with pytest.raises(SiteLinkError, match="counts must be 4 integers"):
            link.take(10**10, {"polarization_controller": {"counts": [1, 2, "x", 4]}})
        with pytest.raises(SiteLinkError, match="want_ps"):
            link.take(10**15, {})
        assert len(link.take(10**10, {})) > 0
    finally:
        link.close()


def test_one_site_needs_two_taggers_and_a_loopback_link(tmp_path):
    cfg = TestbedConfig.load(link_configs(tmp_path))
    shared = cfg.model_copy(
        update={
            "physics": cfg.physics.model_copy(
                update={"clocks": cfg.physics.clocks.model_copy(update={"mode": "shared"})}
            )
        }
    )
    with pytest.raises(TestbedError, match="two_taggers"):
        Testbed(shared).serve_site("alice")
    far = cfg.model_copy(update={"site_link": "tcp://10.0.0.1:5000"})
    with pytest.raises(TestbedError, match="loopback"):
        Testbed(far).serve_site("alice")


def test_qnet_sim_site_processes(tmp_path):
    """`qnet sim ... --site alice` and `--site bob`: two processes; Bob's tagger streams."""
    path = link_configs(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "controller.cli", "sim", str(path), "--duration", "60"]
    procs = [
        subprocess.Popen([*cmd, "--site", s], env=env, stdout=subprocess.PIPE, text=True)
        for s in ("alice", "bob")
    ]
    try:
        cfg = TestbedConfig.load(path)
        spec = cfg.instruments["bob_tagger"]
        d = None
        deadline = time.monotonic() + 60
        while d is None:
            try:
                d = make_instrument(
                    "bob_tagger",
                    spec.driver,
                    spec.resource,
                    timeout_s=2.0,
                    options={"stream_port": spec.stream_port},
                )
                d.connect()
            except Exception:
                d = None
                assert time.monotonic() < deadline, "the bob process did not come up"
                time.sleep(0.5)
        try:
            d.set_streaming(True)
            got = _read(d.tag_source(), 0.5)
        finally:
            d.close()
        assert len(got) > 100 and got.channels.max() <= 3
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=30)[0] for p in procs]
    assert "site alice: serving Bob's photons at tcp://127.0.0.1:" in outs[0]
    assert "site bob: Bob's photons come from the alice process" in outs[1]


def test_qnet_sim_refuses_an_unknown_site(tmp_path):
    path = link_configs(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [sys.executable, "-m", "controller.cli", "sim", str(path), "--site", "carol"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "--site must be 'alice' or 'bob'" in r.stderr
    assert "Traceback" not in r.stderr
