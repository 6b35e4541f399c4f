"""``qnet certs`` and ``qnet kme``: files an operator can use, clear errors for bad configs."""

import os
import stat
import subprocess
import sys

from typer.testing import CliRunner

from controller.cli import app


def test_certs_writes_a_ca_and_private_keys_only_the_owner_reads(tmp_path):
    res = CliRunner().invoke(app, ["certs", str(tmp_path / "pki")])
    assert res.exit_code == 0, res.output
    assert "CA certificate:" in res.output and "sae-slave: certificate" in res.output
    for name in ("kme-a", "kme-b", "sae-master", "sae-slave"):
        key = tmp_path / "pki" / f"{name}-key.pem"
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", "ca.pem", "sae-master.pem"],
        cwd=tmp_path / "pki",
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def test_kme_refuses_a_bad_config_with_the_key_named(tmp_path):
    cfg = tmp_path / "kme.yaml"
    cfg.write_text("kme:\n  kme_id: a\n  peer_kme_id: a\n  site_index: 2\n")
    res = subprocess.run(
        [sys.executable, "-m", "controller.cli", "kme", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert "qnet kme: error:" in res.stderr and "site_index" in res.stderr
    assert "Traceback" not in res.stderr


def test_shipped_kme_configs_are_valid_and_complementary():
    from pathlib import Path

    from configfile import load_mapping
    from kms import KmeConfig

    configs = Path(__file__).resolve().parents[2] / "configs"
    a = KmeConfig.model_validate(load_mapping(configs / "kme-a.yaml").data["kme"])
    b = KmeConfig.model_validate(load_mapping(configs / "kme-b.yaml").data["kme"])
    assert {a.site_index, b.site_index} == {0, 1}
    assert (a.kme_id, a.peer_kme_id) == (b.peer_kme_id, b.kme_id)
    assert a.pairs == b.pairs
