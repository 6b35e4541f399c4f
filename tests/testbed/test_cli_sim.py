"""``qnet sim``: serves the configured instruments to the real drivers and stops cleanly."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from drivers import InstrumentTimeout, make_instrument
from drivers.sim import free_port

from .conftest import REPO, TESTBED_YAML


def _configs(tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the sim node on free ports, and a testbed config pointing at it."""
    node = yaml.safe_load((REPO / "configs" / "sim-node.yaml").read_text())
    for spec in node["instruments"].values():
        port = free_port()
        r = spec["resource"]
        spec["resource"] = (
            f"socket://127.0.0.1:{port}"
            if r.startswith("socket://")
            else (f"TCPIP::127.0.0.1::{port}::SOCKET")
        )
        if (spec.get("options") or {}).get("stream_port"):
            spec["options"]["stream_port"] = free_port()
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(node))
    tb = yaml.safe_load(TESTBED_YAML.read_text())
    tb["node_config"] = "node.yaml"
    tb["instruments"].pop("bob_tagger")
    tb["faults"] = {"spad": "timeout"}
    (tmp_path / "testbed.yaml").write_text(yaml.safe_dump(tb))
    return tmp_path / "testbed.yaml", node["instruments"]


def _sigint_ignored() -> None:
    """What a process started with nohup or ``&`` by a non-interactive shell inherits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _qnet(*args: str, sigint_ignored: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from controller.cli import main; main()", "sim", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_sigint_ignored if sigint_ignored else None,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_sim_serves_every_node_instrument_and_stops_on_a_signal(tmp_path, sig):
    """SIGINT is sent to a process started with SIGINT ignored, as under nohup: Python then
    raises no KeyboardInterrupt, so ``qnet sim`` must handle Ctrl-C itself."""
    cfg, node = _configs(tmp_path)
    proc = _qnet(str(cfg), "--speed", "2", sigint_ignored=sig == signal.SIGINT)
    try:
        pm = make_instrument(
            "power_meter", "thorlabs_pm100", node["power_meter"]["resource"], timeout_s=1.0
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                pm.connect()
                break
            except Exception:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "qnet sim did not come up"
                time.sleep(0.2)
        assert pm.power_w == pytest.approx(0.5 * 0.03 * 0.01, rel=1e-4)
        pm.close()
        spad = make_instrument("spad", "idq_id120", node["spad"]["resource"], timeout_s=0.3)
        with pytest.raises(InstrumentTimeout):
            spad.connect()  # the config injects a timeout fault on it
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    for name, spec in node.items():
        assert name in out and spec["resource"] in out
    assert "stopped at simulated t" in out
    with socket.socket() as s:  # the ports are released
        s.bind(("127.0.0.1", int(node["pump_laser"]["resource"].split("::")[2])))


def test_sim_bad_config_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("physics:\n  laser:\n    slope_efficiency_w_per_a: -1\n")
    proc = _qnet(str(bad), "--duration", "1")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "slope_efficiency_w_per_a" in out


def test_sim_speed_0_runs_the_clock_at_real_time(tmp_path):
    cfg, _ = _configs(tmp_path)
    proc = _qnet(str(cfg), "--speed", "0", "--duration", "0.5")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "speed 1x" in out and "stopped at simulated t" in out
