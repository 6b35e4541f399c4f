"""``qnet devices`` against emulators served in the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from controller.cli import app
from controller.config import ConfigError, load_node_config
from drivers.sim import free_port
from drivers.sim.instruments import EMULATORS


def _config(tmp_path, serve, drop=None):
    node = yaml.safe_load(Path("configs/sim-node.yaml").read_text())
    for name, inst in node["instruments"].items():
        emu = EMULATORS[inst["driver"]]()
        if name == drop:
            port = free_port()
        else:
            srv = serve(emu)
            port = srv.port
            if srv.stream_port:
                inst["options"]["stream_port"] = srv.stream_port
        if inst["resource"].startswith("socket://"):
            inst["resource"] = f"socket://127.0.0.1:{port}"
        else:
            inst["resource"] = f"TCPIP::127.0.0.1::{port}::SOCKET"
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(node, sort_keys=False))
    return path, list(node["instruments"])


def test_all_ready(tmp_path, serve):
    path, names = _config(tmp_path, serve)
    res = CliRunner().invoke(app, ["devices", str(path), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["instruments"]
    assert [r["name"] for r in rows] == names
    assert all(r["state"] == "ready" for r in rows)
    by = {r["name"]: r for r in rows}
    assert by["pump_laser"]["identity"].startswith("Thorlabs,CLD1015")
    assert by["power_meter"]["readings"]["power_w"] == 1e-6
    table = CliRunner().invoke(app, ["devices", str(path)])
    assert table.exit_code == 0
    for n in names:
        assert n in table.stdout
    assert "KEITHLEY" in table.stdout and "ready" in table.stdout


def test_one_unreachable_exits_1(tmp_path, serve):
    path, _ = _config(tmp_path, serve, drop="spad")
    res = CliRunner().invoke(app, ["devices", str(path), "--json"])
    assert res.exit_code == 1
    rows = {r["name"]: r for r in json.loads(res.stdout)["instruments"]}
    assert rows["spad"]["state"].startswith("unreachable")
    assert rows["pump_laser"]["state"] == "ready"


def test_bad_config_exits_2_with_key_path(tmp_path):
    node = yaml.safe_load(Path("configs/sim-node.yaml").read_text())
    node["instruments"]["pump_laser"]["limits"]["current_setpont_a"] = [0, 1]
    node["instruments"]["spad"]["timeout_s"] = -1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(node, sort_keys=False))
    res = CliRunner().invoke(app, ["devices", str(path)])
    assert res.exit_code == 2
    assert "instruments.spad.timeout_s" in res.output
    assert "current_setpont_a" in res.output and str(path) in res.output


def test_shipped_sim_node_config_is_valid():
    cfg = load_node_config("configs/sim-node.yaml")
    assert set(cfg.instruments) == {
        "pump_laser",
        "snspd_bias",
        "spad",
        "power_meter",
        "polarization_controller",
        "time_tagger",
    }
    for name, ic in cfg.instruments.items():
        assert ic.build(name).limits


def test_missing_file_is_config_error(tmp_path):
    try:
        load_node_config(tmp_path / "nope.yaml")
    except ConfigError as exc:
        assert "nope.yaml" in str(exc)
    else:
        raise AssertionError("no ConfigError")


def test_shipped_sim_node_table(serve):
    """``qnet devices configs/sim-node.yaml`` against emulators on the config's fixed ports."""
    import re

    cfg = load_node_config("configs/sim-node.yaml")
    for name, ic in cfg.instruments.items():
        port = int(re.findall(r"\d+", ic.resource)[-1])
        kwargs = {"port": port}
        if "stream_port" in ic.options:
            kwargs["stream_port"] = ic.options["stream_port"]
        try:
            serve(EMULATORS[ic.driver](), **kwargs)
        except OSError:
            pytest.skip(f"port {port} of {name} is in use (is `qnet sim` running?)")
    res = CliRunner().invoke(app, ["devices", "configs/sim-node.yaml"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    for name, ic in cfg.instruments.items():
        row = next(line for line in lines if f" {name} " in line)
        assert "ready" in row and ic.resource in row
    assert "ID Quantique ID1000" in res.stdout and "power_w=1e-06" in res.stdout


@pytest.mark.parametrize(
    ("resource", "address", "moved"),
    [
        ("TCPIP::10.0.0.5::5025::SOCKET", ("10.0.0.5", 5025), "TCPIP::10.0.0.5::7::SOCKET"),
        ("TCPIP0::lab-pm::80::SOCKET", ("lab-pm", 80), "TCPIP0::lab-pm::7::SOCKET"),
        ("socket://127.0.0.1:15101", ("127.0.0.1", 15101), "socket://127.0.0.1:7"),
    ],
)
def test_socket_resources_read_and_move(resource, address, moved):
    from drivers import socket_address, with_port

    assert socket_address(resource) == address
    assert with_port(resource, 7) == moved


@pytest.mark.parametrize("resource", ["ASRL/dev/ttyUSB0::INSTR", "/dev/ttyUSB0", "TCPIP::h::x"])
def test_non_socket_resource_is_named(resource):
    from drivers import socket_address, with_port

    for fn in (socket_address, lambda r: with_port(r, 7)):
        with pytest.raises(ValueError, match="not a socket resource"):
            fn(resource)
