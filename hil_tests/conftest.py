"""The HIL plugin: ``--hil-config``, markers, per-instrument skips, the bench fixtures, the report.

Options (see hil_tests/README.md):

* ``--hil-config CONFIG``: the HIL config (default ``configs/hil-sim.yaml``: the
  emulated testbed, started in-process).
* ``--hil-report DIR``: write ``DIR/report.md`` and its plots at the end.
* ``--run-destructive`` / ``--run-optical``: run the checks marked ``destructive``
  (may stress hardware, e.g. latch an SNSPD) / ``optical`` (need light on the
  detectors). On the emulated testbed both run by default (nothing can be harmed);
  on a real bench they are deselected unless asked for (or selected with ``-m``).

Markers: ``needs(kind, ...)`` skips a check, naming the missing instrument,
when the config has no instrument of that kind.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config import ConfigError

from ._bench import KIND_TEXT, KINDS, Bench
from ._config import HilConfig, load_hil_config
from ._report import HilReport

HERE = Path(__file__).resolve().parent
CONFIG_KEY = pytest.StashKey[HilConfig]()
REPORT_KEY = pytest.StashKey[HilReport]()
BENCH_KEY = pytest.StashKey[Bench]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "hardware-in-the-loop suite (hil_tests/)")
    group.addoption(
        "--hil-config",
        default=None,
        metavar="CONFIG",
        help="HIL config (node config + hil: section); default configs/hil-sim.yaml, "
        "which starts the emulated testbed in-process",
    )
    group.addoption(
        "--hil-report", default=None, metavar="DIR", help="write DIR/report.md and plots"
    )
    group.addoption(
        "--run-destructive",
        action="store_true",
        help="run checks that may stress hardware (always on for the emulated testbed)",
    )
    group.addoption(
        "--run-optical",
        action="store_true",
        help="run checks that need light on the detectors (always on for the emulated testbed)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "destructive: may stress or harm hardware (HIL)")
    config.addinivalue_line("markers", "optical: needs the pump on and light on detectors (HIL)")
    config.addinivalue_line("markers", "needs(*kinds): instrument kinds the HIL check needs")
    path = config.getoption("--hil-config") or str(config.rootpath / "configs" / "hil-sim.yaml")
    try:
        cfg = load_hil_config(path)
    except ConfigError as exc:
        raise pytest.UsageError(f"--hil-config: {exc}") from None
    config.stash[CONFIG_KEY] = cfg
    bench = "emulated testbed (in-process)" if cfg.emulated else "real instruments"
    report = HilReport(str(cfg.path), f"{bench}, node {cfg.node.node}")
    config.stash[REPORT_KEY] = report
    config.pluginmanager.register(_Recorder(report), "hil-report-recorder")


def _missing_kinds(cfg: HilConfig, kinds: tuple[str, ...]) -> list[str]:
    have = {KINDS.get(ic.driver) for ic in cfg.node.instruments.values()}
    return [k for k in kinds if k not in have]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cfg = config.stash[CONFIG_KEY]
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    user_select = bool(config.getoption("markexpr", ""))
    for item in items:
        if HERE not in item.path.parents:  # a combined run: other folders' tests untouched
            keep.append(item)
            continue
        if not user_select and not cfg.emulated:
            wanted = {
                "destructive": config.getoption("--run-destructive"),
                "optical": config.getoption("--run-optical"),
            }
            if any(item.get_closest_marker(m) and not ok for m, ok in wanted.items()):
                dropped.append(item)
                continue
        for mark in item.iter_markers("needs"):
            for kind in mark.args:
                if kind not in KIND_TEXT:
                    raise pytest.UsageError(f"{item.nodeid}: needs({kind!r}): unknown kind")
            missing = _missing_kinds(cfg, mark.args)
            if missing:
                what = ", ".join(KIND_TEXT[k] for k in missing)
                item.add_marker(pytest.mark.skip(reason=f"config {cfg.path.name} has no {what}"))
                break
        keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        config.stash[REPORT_KEY].deselected.extend(i.nodeid for i in dropped)
        items[:] = keep


class _Recorder:
    """Feeds every test phase's outcome into the HIL report."""

    def __init__(self, report: HilReport) -> None:
        self.report = report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not report.nodeid.startswith(f"{HERE.name}/"):
            return
        message = ""
        if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2]).removeprefix("Skipped: ")
        elif report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message if crash is not None else str(report.longrepr)[-300:]
        self.report.record(report.nodeid, report.when, report.outcome, message, report.duration)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    out = config.getoption("--hil-report")
    hil = config.stash.get(REPORT_KEY, None)
    if out and hil is not None:
        path = hil.write(Path(out))
        tr = config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(f"HIL report: {path}")


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def hil_config(pytestconfig: pytest.Config) -> HilConfig:
    """The loaded HIL config."""
    return pytestconfig.stash[CONFIG_KEY]


@pytest.fixture(scope="session")
def hil_report(pytestconfig: pytest.Config) -> HilReport:
    """Where checks put the numbers and plot data of the report."""
    return pytestconfig.stash[REPORT_KEY]


@pytest.fixture(scope="session")
def _bench_session(pytestconfig: pytest.Config, hil_config: HilConfig, hil_report: HilReport):
    bench = Bench(hil_config)
    bench.config_options = {
        "run_optical": pytestconfig.getoption("--run-optical"),
        "run_destructive": pytestconfig.getoption("--run-destructive"),
    }
    try:
        bench.start()
        yield bench
    finally:
        bench.close()
    for name, why in bench.open_errors.items():
        hil_report.notes.append(f"{name} could not be opened: {why}")


@pytest.fixture
def bench(_bench_session: Bench):
    """The bench; after the test (passed or failed) every instrument is back in its safe state."""
    try:
        yield _bench_session
    finally:
        problems = _bench_session.restore_safe_state()
    assert not problems, "could not restore the safe state: " + "; ".join(problems)
