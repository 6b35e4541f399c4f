"""Meta-tests of the HIL suite (hil_tests/): run it in a subprocess against the emulated testbed
and check what an operator and CI get: the pass/skip/fail sets, the messages, JUnit XML and the
report with its plots."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"

pytestmark = pytest.mark.slow

#: The checks that need the SPAD module (idq_id120) and nothing else missing from
#: configs/hil-missing-spad.yaml.
SPAD_CHECKS = {
    "test_identity[spad]",
    "test_setpoint_round_trip[spad]",
    "test_setpoint_refused_outside_limits[spad]",
    "test_spad_module_dark_rate",
    "test_spad_module_counts_with_pump",
}

#: The checks that must fail when Bob's H detector (SPAD module `spad`, channel 4) counts nothing.
DEAD_DETECTOR_FAILS = {
    "test_spad_module_counts_with_pump",
    "test_pump_sweep_rates_linear",
    "test_car_falls_with_pump_power",
    "test_delay_calibration_finds_fiber_delay",
    "test_qber_below_threshold_after_compensation",
}


def run_hil(tmp_path: Path, config: Path | None, *extra: str):
    """Run the suite; returns (exit code, output, {test name: (outcome, message)})."""
    junit = tmp_path / "junit.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "hil_tests",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        "--hil-report",
        str(tmp_path / "report"),
        *extra,
    ]
    if config is not None:
        cmd += ["--hil-config", str(config)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert junit.exists(), f"no JUnit XML written:\n{out[-3000:]}"
    results = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome, message = tag, (el.get("message") or "") + "\n" + (el.text or "")
                break
        results[case.get("name")] = (outcome, message)
    return proc.returncode, out, results


def test_suite_passes_on_testbed_and_writes_report(tmp_path):
    rc, out, results = run_hil(tmp_path, None)
    assert rc == 0, out[-4000:]
    assert len(results) >= 25
    bad = {k: v for k, v in results.items() if v[0] != "passed"}
    assert not bad, bad
    report = (tmp_path / "report" / "report.md").read_text()
    for png in ("car_vs_pump.png", "histogram_at_delay.png", "qber_compensation.png"):
        assert f"]({png})" in report
        assert (tmp_path / "report" / png).stat().st_size > 5000, png
    assert "Delay: found" in report and "QBER after compensation" in report
    assert "| `test_identity[laser]` | **passed**" in report


def test_missing_instrument_skips_exactly_its_checks(tmp_path):
    rc, out, results = run_hil(tmp_path, CONFIGS / "hil-missing-spad.yaml")
    assert rc == 0, out[-4000:]
    skipped = {k for k, v in results.items() if v[0] == "skipped"}
    assert skipped == SPAD_CHECKS
    for name in SPAD_CHECKS:
        assert "hil-missing-spad.yaml has no SPAD module (idq_id120)" in results[name][1]
    assert all(v[0] == "passed" for k, v in results.items() if k not in SPAD_CHECKS)


def test_dead_detector_fails_the_right_checks_with_useful_messages(tmp_path):
    cfg = tmp_path / "hil-dead-bob-h.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "node_config": str(CONFIGS / "sim-node.yaml"),
                "hil": {
                    "extends": str(CONFIGS / "hil-sim.yaml"),
                    "emulate": {"disarm_detector_modules": ["spad"]},
                },
            }
        )
    )
    rc, out, results = run_hil(tmp_path, cfg)
    assert rc == 1, out[-4000:]
    failed = {k for k, v in results.items() if v[0] in ("failure", "error")}
    assert failed == DEAD_DETECTOR_FAILS, out[-4000:]
    assert all(v[0] == "passed" for k, v in results.items() if k not in failed)
    for name in DEAD_DETECTOR_FAILS - {"test_spad_module_counts_with_pump"}:
        msg = results[name][1]
        assert "detector bob_H (channel 4): 0 counts/s with the pump on at 40.0 mA" in msg, msg
        assert "check the fiber to bob_H, the bias/arming (spad)" in msg, msg
    spad_msg = results["test_spad_module_counts_with_pump"][1]
    assert "spad" in spad_msg and "0 counts/s" in spad_msg and "armed" in spad_msg, spad_msg
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| `test_delay_calibration_finds_fiber_delay` | **failed**" in report
