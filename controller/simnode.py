"""An emulated node on free loopback ports: the testbed plus a matching daemon config.

The shipped ``configs/testbed.yaml`` and ``configs/sim-daemon.yaml`` use fixed
ports (15101-15109). The demo, the integration test and the benchmark need a
node that never collides with anything else on the machine: :func:`make_sim_node`
re-addresses every instrument (and tag stream) of both configs to free ports,
writes the daemon config into a work folder, and returns the (unserved)
testbed and the path of that config.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from controller._daemon_config import read_daemon_yaml
from drivers import with_port
from drivers.sim import free_port as free_port

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def make_sim_node(
    workdir: Path,
    *,
    broker: tuple[str, int] | None = None,
    testbed_changes: Callable[[dict[str, Any]], None] | None = None,
    daemon_changes: Callable[[dict[str, Any]], None] | None = None,
    testbed_yaml: Path = CONFIGS / "testbed.yaml",
    daemon_yaml: Path = CONFIGS / "sim-daemon.yaml",
) -> tuple[Any, Path]:
    """(Testbed, daemon config path) of the emulated node on free ports (see module docstring).

    ``testbed_changes`` / ``daemon_changes`` edit the raw config mappings in place
    before they are validated/written (e.g. lower an interlock threshold).
    """
    from drivers.sim.testbed import Testbed, TestbedConfig

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tcfg = TestbedConfig.load(testbed_yaml).model_dump()
    ports: dict[str, tuple[int, int | None]] = {}
    for name, spec in tcfg["instruments"].items():
        if not spec.get("resource"):
            continue
        port = free_port()
        stream = free_port() if spec.get("stream_port") else None
        ports[name] = (port, stream)
        spec["resource"] = with_port(spec["resource"], port)
        if stream is not None:
            spec["stream_port"] = stream
    if testbed_changes is not None:
        testbed_changes(tcfg)
    testbed = Testbed(TestbedConfig.model_validate(tcfg))

    raw = read_daemon_yaml(daemon_yaml)
    raw.pop("node_config", None)  # the written config is self-contained
    instruments = raw.get("instruments") or {}
    for name, spec in instruments.items():
        if name in ports:
            port, stream = ports[name]
            spec["resource"] = with_port(spec["resource"], port)
            if stream is not None:
                spec.setdefault("options", {})["stream_port"] = stream
    raw["instruments"] = instruments
    tel = raw["daemon"].setdefault("telemetry", {})
    if broker is None:
        tel["broker"] = None
    else:
        b = dict(tel.get("broker") or {})
        b.update(host=broker[0], port=broker[1])
        b.setdefault("client_id", f"qnet-{raw['node']}")
        tel["broker"] = b
    tel["outbox"] = {"path": str(workdir / "outbox.sqlite")}
    if daemon_changes is not None:
        daemon_changes(raw)
    path = workdir / "daemon.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return testbed, path


#: The two-site testbed: its config and the two sites' node configs (fixed ports 152xx).
LINK_CONFIGS = ("testbed-link.yaml", "alice-link.yaml", "bob-link.yaml")


def make_link_sites(workdir: Path, *, speed: float | None = None, configs: Path = CONFIGS) -> Path:
    """The two-site testbed's configs re-addressed to free loopback ports, in ``workdir``.

    Every loopback port of ``testbed-link.yaml``, ``alice-link.yaml`` and
    ``bob-link.yaml`` (instruments, tag streams, the site link) gets a free one;
    ``speed`` replaces the testbed's pace. Returns the written testbed config's path
    (``qnet sim PATH --site alice`` / ``--site bob``).
    """
    import re

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ports: dict[str, str] = {}

    def readdress(text: str) -> str:
        return re.sub(r"\b152\d\d\b", lambda m: ports.setdefault(m[0], str(free_port())), text)

    for name in LINK_CONFIGS:
        text = readdress((configs / name).read_text())
        if name == LINK_CONFIGS[0] and speed is not None:
            text = re.sub(r"(?m)^speed: [^#\n]*", f"speed: {float(speed)!r}   ", text)
        (workdir / name).write_text(text)
    return workdir / LINK_CONFIGS[0]
