"""Start and stop the real servers qnet's tests and benchmarks use, on free loopback ports.

* ``start_mosquitto(dir, ...)``: mosquitto with a generated config (persistence on, optional
  password file and ACL, ``max_queued_messages`` raised).
* ``start_victoria_metrics(dir)``: VictoriaMetrics, the InfluxDB v2 write API target (dedup at
  1 ms so a replayed point overwrites itself as in InfluxDB).
* ``start_influxdb1(dir)``: InfluxDB 1.x (``influxd``) for real InfluxQL.

Each returns a ``Server`` (host, port, pid, ``url``) with ``stop()`` (SIGTERM), ``kill()``
(SIGKILL), ``start()`` and ``restart()`` (same port, same data). Data lives in the given
directory; processes are stopped by their own pid only.

A missing binary raises ``ServerUnavailable``. In pytest use ``require(name)`` or the helpers
through it: it skips with a clear reason, except under ``CI=true`` where it FAILS (CI must
run these tests).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from drivers.sim import free_port as free_port

HOST = "127.0.0.1"

BINARIES = {
    "mosquitto": ("mosquitto", "/usr/sbin/mosquitto"),
    "mosquitto_passwd": ("mosquitto_passwd", "/usr/bin/mosquitto_passwd"),
    "victoria-metrics": ("victoria-metrics", "/usr/bin/victoria-metrics"),
    "influxd": ("influxd", "/usr/bin/influxd"),
}


class ServerUnavailable(RuntimeError):
    """A server binary is not installed (``make system-deps`` installs them)."""


def binary(name: str) -> str:
    """Absolute path of a server binary, or raise ServerUnavailable."""
    cmd, fallback = BINARIES.get(name, (name, ""))
    found = shutil.which(cmd) or (fallback if fallback and os.access(fallback, os.X_OK) else None)
    if not found:
        raise ServerUnavailable(f"{name} is not installed (run `make system-deps`)")
    return found


def require(name: str) -> str:
    """For tests: the binary's path; skip if missing, but FAIL under ``CI=true``."""
    import pytest

    try:
        return binary(name)
    except ServerUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{exc}; under CI=true the real servers are required")
        pytest.skip(str(exc))
        raise  # unreachable


def _tcp_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
        return True
    return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError):
        return False


def terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """SIGTERM ``proc``, wait up to ``timeout_s``, then SIGKILL; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass
class Server:
    """One server process: how to start it, where it listens, and how to end it."""

    name: str
    argv: list[str]
    port: int
    workdir: Path
    ready: Callable[[Server], bool]
    host: str = HOST
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    startup_timeout_s: float = 20.0

    @property
    def pid(self) -> int | None:
        """The process id while running."""
        return self.proc.pid if self.proc is not None else None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (HTTP servers)."""
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """Where the process's stdout/stderr go."""
        return self.workdir / f"{self.name}.log"

    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Server:
        """Start the process and wait until it answers; raise RuntimeError with its log if not."""
        if self.running():
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                self.argv, stdout=logf, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.ready(self):
                return self
            time.sleep(0.05)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        self.kill()
        raise RuntimeError(f"{self.name} did not start on port {self.port}:\n{tail}")

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, wait, then SIGKILL if it does not exit."""
        if self.proc is None:
            return
        terminate(self.proc, timeout_s)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL now."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc = None

    def restart(self) -> Server:
        """Stop and start again on the same port with the same data."""
        self.stop()
        return self.start()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def mosquitto_password_file(path: Path, users: dict[str, str]) -> Path:
    """Write a mosquitto password file for ``{user: password}`` with ``mosquitto_passwd``."""
    exe = binary("mosquitto_passwd")
    path.parent.mkdir(parents=True, exist_ok=True)
    for i, (user, password) in enumerate(users.items()):
        flags = ["-b", "-c"] if i == 0 else ["-b"]
        subprocess.run([exe, *flags, str(path), user, password], check=True, capture_output=True)
    path.chmod(0o600)
    return path


def start_mosquitto(
    workdir: Path,
    *,
    port: int | None = None,
    password_file: Path | None = None,
    acl_file: Path | None = None,
    persistence: bool = True,
    extra_config: str = "",
) -> Server:
    """Mosquitto on a free port; anonymous allowed unless a password file is given."""
    exe = binary("mosquitto")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    lines = [
        f"listener {port} {HOST}",
        f"allow_anonymous {'false' if password_file else 'true'}",
        "max_queued_messages 1000000",
        "max_inflight_messages 100",
        "persistent_client_expiration 1d",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if persistence:
        lines += ["persistence true", f"persistence_location {workdir}/", "autosave_interval 1"]
    if os.geteuid() == 0:
        # as root mosquitto drops to user "mosquitto", which cannot write our temp dirs
        lines.append("user root")
    if password_file:
        lines.append(f"password_file {password_file}")
    if acl_file:
        lines.append(f"acl_file {acl_file}")
    conf = workdir / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n" + extra_config)
    server = Server("mosquitto", [exe, "-c", str(conf)], port, workdir, lambda s: _tcp_open(s.port))
    return server.start()


def start_victoria_metrics(workdir: Path, *, port: int | None = None, dedup: bool = True) -> Server:
    """VictoriaMetrics serving the InfluxDB v2 write API at ``url``; data in ``workdir/data``."""
    exe = binary("victoria-metrics")
    workdir = Path(workdir)
    port = port or free_port()
    argv = [
        exe,
        f"-httpListenAddr={HOST}:{port}",
        f"-storageDataPath={workdir / 'data'}",
        "-retentionPeriod=100y",
        "-loggerLevel=WARN",
    ]
    if dedup:
        argv.append("-dedup.minScrapeInterval=1ms")
    server = Server("victoria-metrics", argv, port, workdir, lambda s: _http_ok(f"{s.url}/health"))
    return server.start()


def start_influxdb1(workdir: Path, *, port: int | None = None) -> Server:
    """InfluxDB 1.x (``influxd``) with its HTTP API at ``url`` (v1 API: /write, /query)."""
    exe = binary("influxd")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    rpc = free_port()
    conf = workdir / "influxdb.conf"
    conf.write_text(
        f"""reporting-disabled = true
bind-address = "{HOST}:{rpc}"
[meta]
  dir = "{workdir}/meta"
[data]
  dir = "{workdir}/data"
  wal-dir = "{workdir}/wal"
  query-log-enabled = false
[http]
  bind-address = "{HOST}:{port}"
  log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
"""
    )
    server = Server(
        "influxd", [exe, "-config", str(conf)], port, workdir, lambda s: _http_ok(f"{s.url}/ping")
    )
    return server.start()


def vm_force_flush(vm: Server) -> None:
    """Make freshly written VictoriaMetrics rows visible to queries/exports."""
    with urllib.request.urlopen(f"{vm.url}/internal/force_flush", timeout=10) as r:
        r.read()


def vm_export(vm: Server, match: str) -> list[dict[str, object]]:
    """``/api/v1/export`` of the series matching ``match`` (one dict per series)."""
    import json
    import urllib.parse

    vm_force_flush(vm)
    q = urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(f"{vm.url}/api/v1/export?{q}", timeout=30) as r:
        return [json.loads(line) for line in r.read().splitlines() if line.strip()]


def start_shipped_mosquitto(directory: Path, users: dict[str, str]) -> Server:
    """Mosquitto from the shipped ``configs/mosquitto/mosquitto.conf`` and ACL, on loopback.

    The TLS listener is dropped and the paths, port and log go to ``directory``; the
    password file holds ``users`` (name -> password). For tests of the shipped ACL.
    """
    import re

    repo = Path(__file__).resolve().parents[2]
    exe = require("mosquitto")
    require("mosquitto_passwd")
    pw = mosquitto_password_file(directory / "passwd", users)
    port = free_port()
    conf = (repo / "configs/mosquitto/mosquitto.conf").read_text()
    conf = re.sub(r"(?m)^(listener 8883|certfile .*|keyfile .*)$", "", conf)
    conf = conf.replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1")
    conf = conf.replace("/etc/mosquitto/qnet.passwd", str(pw))
    conf = conf.replace("/etc/mosquitto/qnet.acl", str(repo / "configs/mosquitto/acl"))
    conf = conf.replace("/var/lib/mosquitto/", f"{directory}/")
    conf = conf.replace("log_dest syslog", "log_dest stdout")
    conf += "\nuser root\n" if os.geteuid() == 0 else ""
    (directory / "m.conf").write_text(conf)
    return Server(
        "mosquitto",
        [exe, "-c", str(directory / "m.conf")],
        port,
        directory,
        lambda s: _tcp_open(s.port),
    ).start()
