"""Fixtures of the telemetry tests: real mosquitto, VictoriaMetrics and InfluxDB 1.x servers."""

from __future__ import annotations

import pytest

from controller.testing import servers
from controller.testing.pipeline import BridgeProcess, bridge_config


@pytest.fixture
def mosquitto(tmp_path):
    servers.require("mosquitto")
    srv = servers.start_mosquitto(tmp_path / "mosquitto")
    yield srv
    srv.stop()


@pytest.fixture
def vm(tmp_path):
    servers.require("victoria-metrics")
    srv = servers.start_victoria_metrics(tmp_path / "vm")
    yield srv
    srv.stop()


@pytest.fixture
def bridge(tmp_path, mosquitto, vm):
    """``qnet bridge`` from mosquitto to VictoriaMetrics with the default test config, started."""
    proc = BridgeProcess(bridge_config(tmp_path, mosquitto, vm), tmp_path / "bridge.log").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def influxdb1(tmp_path_factory):
    servers.require("influxd")
    srv = servers.start_influxdb1(tmp_path_factory.mktemp("influxd"))
    yield srv
    srv.stop()
