from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from controller.cli import app
from controller.simnode import free_port

runner = CliRunner()
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SIM = str(CONFIGS / "sim-daemon.yaml")


@pytest.mark.parametrize("cmd", ["run", "status", "get", "set", "calibrate"])
def test_help(cmd):
    r = runner.invoke(app, [cmd, "--help"])
    assert r.exit_code == 0
    assert "Usage" in r.output


def test_run_check_valid_and_invalid(tmp_path):
    r = runner.invoke(app, ["run", "--check", SIM])
    assert r.exit_code == 0, r.output
    assert "sim-node" in r.output
    bad = yaml.safe_load(Path(SIM).read_text())
    bad["daemon"]["acquisition"]["window_s"] = "soon"
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    (tmp_path / "sim-node.yaml").write_text((CONFIGS / "sim-node.yaml").read_text())
    r = runner.invoke(app, ["run", str(p)])
    assert r.exit_code == 2
    assert "daemon.acquisition.window_s" in r.output and str(p) in r.output


def test_unreachable_daemon_exits_1():
    port = free_port()  # nothing listens there
    for args in (
        ["get", SIM, "pump_laser", "laser_on"],
        ["set", SIM, "pump_laser", "laser_on", "false"],
        ["calibrate", SIM],
        ["status", SIM, "--once"],
    ):
        r = runner.invoke(app, [*args, "--broker", f"127.0.0.1:{port}", "--timeout", "2"])
        assert r.exit_code == 1, (args, r.output)
        assert "unreachable" in r.output or "no reply" in r.output


def test_bad_usage_exits_2():
    r = runner.invoke(app, ["set", SIM, "pump_laser", "laser_on", "maybe"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["get", SIM, "pump_laser", "laser_on", "--broker", "nohostport"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["get", "does-not-exist.yaml", "pump_laser", "laser_on"])
    assert r.exit_code == 2


def test_token_from_the_environment(monkeypatch):
    from controller._cli_options import auth_fields

    monkeypatch.setenv("QNET_TEST_TOKEN", "s3cret")
    assert auth_fields("alice", "QNET_TEST_TOKEN") == {"user": "alice", "token": "s3cret"}
    assert auth_fields(None, None) == {}
    # every command that sends a request names a missing token variable and exits 2
    monkeypatch.delenv("QNET_TEST_TOKEN")
    for args in (
        ["get", SIM, "pump_laser", "laser_on"],
        ["set", SIM, "pump_laser", "laser_on", "false"],
        ["calibrate", SIM],
    ):
        r = runner.invoke(app, [*args, "--user", "alice", "--token-env", "QNET_TEST_TOKEN"])
        assert r.exit_code == 2, (args, r.output)
        assert "QNET_TEST_TOKEN" in r.output, (args, r.output)
