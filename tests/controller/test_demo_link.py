"""`qnet demo --link`: verdict, ETSI 014 key compared across the two sites, --keep-serving."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller import _link_engine
from controller.demo_link import Verdict, fetch_key_pair, grouped, judge, percent, si
from kms import KeyStore
from kms.testing import MASTER_SAE, SLAVE_SAE, KmeThread, kme_pair_configs

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def test_numbers_are_formatted_for_people():
    assert si(9123.4, "bit/s") == "9.12 kbit/s"
    assert si(0.02, "s") == "20 ms"
    assert si(1e7, "bit/s") == "10 Mbit/s"
    assert si(None, "s") == "n/a"
    assert grouped(12345678) == "12 345 678"
    assert percent(0.01134) == "1.13 %"


def _fill(path: Path, site: int, blocks: dict[int, bytes]) -> None:
    store = KeyStore(path, site_index=site)
    try:
        for block_id, key in blocks.items():
            store.add_block(block_id, key)
    finally:
        store.close()


@pytest.mark.parametrize("same", [True, False], ids=["same-blocks", "different-blocks"])
def test_the_014_key_is_compared_across_the_two_kmes(tmp_path, same):
    """enc_keys at A by the master SAE, dec_keys at B by the slave SAE, over real mutual TLS:
    identical when the stores hold the same block, and the verdict says so; different
    blocks under the same IDs (what a broken link would store) fail the stage."""
    a, b, pki = kme_pair_configs(tmp_path)
    blocks = {k: os.urandom(4096) for k in (1, 2)}  # even IDs: site A issues from them
    _fill(a.store, 0, blocks)
    _fill(b.store, 1, blocks if same else {k: os.urandom(4096) for k in blocks})
    with KmeThread(a) as kme_a, KmeThread(b) as kme_b:
        got = fetch_key_pair(kme_a.url, kme_b.url, pki, MASTER_SAE, SLAVE_SAE)
    assert got["ok"] is same and got.get("identical", False) is same, got
    if not same:  # the key ID carries a check on the block: site B does not know it
        assert "unknown" in got["error"]
    stage = next(s for s in judge({"etsi014": got}).stages if s.name == "ETSI 014 key")
    assert stage.ok is same


def test_an_empty_store_fails_with_the_kmes_answer(tmp_path):
    a, b, pki = kme_pair_configs(tmp_path)
    with KmeThread(a) as kme_a, KmeThread(b) as kme_b:
        got = fetch_key_pair(kme_a.url, kme_b.url, pki, MASTER_SAE, SLAVE_SAE)
    assert not got["ok"] and got["error"].startswith("HTTP 503")


def test_verdict_lines_fit_80_columns():
    figures = {
        "engine": {
            "clock_locked": True,
            "clock_offset_ps": -730_000_041_123.0,
            "clock_ppm": -40.998,
            "sifted_bits_alice": 123_456,
            "sifted_bits_bob": 123_456,
            "sifted_positions_identical": True,
            "qber_z": 0.0113,
            "qber_z_low": 0.009,
            "qber_z_high": 0.014,
            "qber_x": 0.0121,
            "qber_x_low": 0.01,
            "qber_x_high": 0.015,
            "ec_efficiency": 1.07,
            "secret_bps": 9123.4,
            "secret_bits": 91_234,
            "frames": 5,
            "frames_in_flight": 0,
            "auth": "wegman-carter",
            "auth_bits_taken": 640,
        },
        "clock_truth": {"ppm": -40.9995},
        "store_alice": {"blocks": 3, "stored_bytes": 12_000},
        "store_bob": {"blocks": 3, "stored_bytes": 12_000},
        "etsi014": {"ok": False, "error": "HTTP 503: " + "x" * 200},
    }
    v = judge(figures)
    lines = v.lines()
    assert all(len(x) <= 80 for line in lines for x in line.split("\n")), lines
    assert [s.ok for s in v.stages] == [True] * 8 + [False]
    assert lines[-1] == "VERDICT: FAIL"
    assert Verdict().ok is False  # no stage: no PASS


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_keep_serving_needs_link(tmp_path):
    r = _run(["demo", "--keep-serving", "--runs", str(tmp_path)], 60)
    assert r.returncode == 2 and "--keep-serving goes with --link" in r.stderr
    assert "Traceback" not in r.stderr


def _sigint_ignored() -> None:
    """What a process started with nohup or ``&`` by a non-interactive shell inherits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_keep_serving_ends_with_how_to_reach_both_kmes(tmp_path):
    """The last lines: each KME's URL, the master SAE at one site and the slave at the other
    with absolute certificate and key paths, the CA; curl with them reaches the KME; then
    Ctrl-C ends it, even when it was started with SIGINT ignored (Python then raises no
    KeyboardInterrupt, so the demo must handle the signal itself)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "demo",
            "--link",
            "--keep-serving",
            "--duration",
            "6",
            "--runs",
            str(tmp_path),
        ],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_sigint_ignored,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while not (lines and lines[-1].startswith("CA certificate: ")):
            assert time.monotonic() < deadline, lines
            line = proc.stdout.readline()
            assert line, f"the demo ended early: {lines}"
            lines.append(line.rstrip("\n"))
        tail = lines[-9:]
        assert re.fullmatch(r"KME A: https://127\.0\.0\.1:\d+", tail[0])
        assert re.fullmatch(r"KME B: https://127\.0\.0\.1:\d+", tail[1])
        assert tail[2] == f"master SAE at A: {MASTER_SAE}"
        assert tail[5] == f"slave SAE at B: {SLAVE_SAE}"
        paths = [Path(x.split()[-1]) for x in (tail[3], tail[4], tail[6], tail[7], tail[8])]
        assert all(p.is_absolute() and p.is_file() for p in paths), paths
        cert, key, ca = paths[0], paths[1], paths[4]
        url_a = tail[0].split()[-1]
        curl = subprocess.run(
            [
                "curl",
                "-s",
                "--cacert",
                str(ca),
                "--cert",
                str(cert),
                "--key",
                str(key),
                f"{url_a}/api/v1/keys/{SLAVE_SAE}/status",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        status = json.loads(curl.stdout)
        assert status["master_SAE_ID"] == MASTER_SAE and status["slave_SAE_ID"] == SLAVE_SAE
        assert any(line.startswith("curl --cacert ") for line in lines)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()  # leave nothing running; the test fails all the same
            raise
    assert proc.returncode in (0, 1)  # the verdict's code, after a clean shutdown


@pytest.mark.skipif(
    not _link_engine.available(),
    reason="the link engine or coincidence.ClockTracker (reference-free clock sync) is absent",
)
def test_demo_link_passes_with_identical_keys(tmp_path):
    r = _run(["demo", "--link", "--duration", "40", "--runs", str(tmp_path)], 600)
    out = r.stdout
    assert "VERDICT: PASS" in out, out + r.stderr
    assert all(len(x) <= 80 for x in out.splitlines() if "/" not in x), out  # paths aside
    (report,) = tmp_path.glob("link-demo-*/link-demo.json")
    raw = json.loads(report.read_text())
    assert raw["verdict"] == "PASS" and raw["etsi014"]["identical"] is True
    assert raw["engine"]["sifted_positions_identical"] is True
    # over a WAN with latency and loss, every frame closed, authenticated by Wegman-Carter
    assert raw["wan"]["latency_s"] >= 0.02 and raw["wan"]["loss"] > 0
    assert raw["engine"]["frames_in_flight"] == 0 and raw["engine"]["blocks_stored_bob"] >= 2
    assert raw["engine"]["auth"] == "wegman-carter" and raw["engine"]["auth_bits_taken"] > 0
    assert r.returncode == 0
