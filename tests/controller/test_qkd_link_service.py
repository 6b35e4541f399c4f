"""The link's daemon service: its config section, and two services keying over loopback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from channel import generate_keys
from controller._daemon_config import DaemonSection
from controller.qkd_link import LinkService, QkdLinkConfig
from controller.qkd_link.testing import two_site_tags
from controller.status_view import qkd_link_line
from drivers.sim.server import free_port


def _section(tmp: Path, role: str, channel_role: str, address: str, site: int) -> dict:
    me, peer = ("alice", "bob") if role == "sender" else ("bob", "alice")
    return {
        "role": role,
        "channel": {
            "role": channel_role,
            "address": address,
            "secret_key_file": str(tmp / f"{me}.key_secret"),
            "peer_public_key_file": str(tmp / f"{peer}.key"),
        },
        "epoch_s": 0.5,
        "frame_bits": 2**15,
        "q_expected": 0.02,
        "q_tol": 0.06,
        "acquire_span_s": 3.0,
        "track_window_s": 0.5,
        "store": f"{me}.sqlite",
        "site_index": site,
        "report_interval_s": 0.2,
    }


def test_config_errors_name_the_setting(tmp_path: Path) -> None:
    good = _section(tmp_path, "sender", "client", "tcp://127.0.0.1:5560", 0)
    QkdLinkConfig.model_validate(good)
    for key, value, words in (
        ("frame_bits", 10, "frame_bits"),
        ("role", "alice", "role"),
        ("detectors", {"H": 0, "V": 0}, "used twice"),
        ("q_expected", 0.2, "q_expected"),
    ):
        with pytest.raises(ValidationError, match=words):
            QkdLinkConfig.model_validate({**good, key: value})
    with pytest.raises(ValidationError, match="address"):
        QkdLinkConfig.model_validate(
            {**good, "channel": {**good["channel"], "address": "bob:5560"}}
        )
    sec = DaemonSection.model_validate({"link": "ab", "qkd_link": good})
    assert sec.qkd_link is not None and sec.qkd_link.role == "sender"


def test_wegman_carter_section_names_its_secret(tmp_path: Path) -> None:
    from controller.qkd_link._service import read_auth_secret

    good = _section(tmp_path, "sender", "client", "tcp://127.0.0.1:5560", 0)
    with pytest.raises(ValidationError, match=r"auth_secret_file.*qnet keys psk"):
        QkdLinkConfig.model_validate({**good, "auth": "wegman-carter"})
    with pytest.raises(ValidationError, match="auth"):
        QkdLinkConfig.model_validate({**good, "auth": "hmac"})
    cfg = QkdLinkConfig.model_validate(
        {**good, "auth": "wegman-carter", "auth_secret_file": "ab.psk", "cascade_prefer": "rounds"}
    )
    eng = cfg.engine_config("ab")
    assert eng.auth == "wegman-carter" and eng.cascade_prefer == "rounds"
    with pytest.raises(ValueError, match=r"cannot read the pre-shared secret .*ab\.psk"):
        cfg.auth_secret(tmp_path)
    (tmp_path / "ab.psk").write_bytes(b"x" * 10)
    with pytest.raises(ValueError, match="has 10 bytes, at least 256"):
        read_auth_secret(tmp_path / "ab.psk")
    (tmp_path / "ab.psk").write_bytes(b"x" * 300)
    assert cfg.auth_secret(tmp_path) == b"x" * 300


def test_wegman_carter_secret_is_claimed_once(tmp_path: Path) -> None:
    """A link never starts twice from one pre-shared secret (its pads would be reused)."""
    from controller.qkd_link._service import claim_auth_secret

    psk = tmp_path / "ab.psk"
    psk.write_bytes(bytes(range(256)) * 2)
    assert claim_auth_secret(psk, psk.read_bytes(), link="ab") == bytes(range(256)) * 2
    record = json.loads((tmp_path / "ab.psk.used").read_text())
    assert record["link"] == "ab" and len(record["sha256"]) == 64
    assert psk.read_bytes().hex() not in (tmp_path / "ab.psk.used").read_text()
    with pytest.raises(ValueError, match=r"already used by link 'ab'.*qnet keys psk .*overwrite"):
        claim_auth_secret(psk, psk.read_bytes(), link="ab")
    psk.write_bytes(bytes(range(255, -1, -1)) * 2)  # a fresh secret is accepted
    assert claim_auth_secret(psk, psk.read_bytes(), link="ab")[:1] == b"\xff"
    with pytest.raises(ValueError, match="already used"):
        claim_auth_secret(psk, psk.read_bytes(), link="ab")
    (tmp_path / "ab.psk.used").write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read .*ab\.psk\.used"):
        claim_auth_secret(psk, psk.read_bytes(), link="ab")


def test_a_refused_start_leaves_nothing_open(tmp_path: Path) -> None:
    """A start refused at its last step (a spent secret) frees the port and the store again."""
    from controller.qkd_link._service import claim_auth_secret

    generate_keys("alice", tmp_path)
    generate_keys("bob", tmp_path)
    port = free_port()
    section = {
        **_section(tmp_path, "analyser", "server", f"tcp://127.0.0.1:{port}", 1),
        "auth": "wegman-carter",
        "auth_secret_file": "ab.psk",
    }
    cfg = QkdLinkConfig.model_validate(section)
    psk = tmp_path / "ab.psk"
    psk.write_bytes(bytes(range(256)) * 2)
    claim_auth_secret(psk, psk.read_bytes(), link="ab")

    async def main() -> str:
        bob = LinkService(cfg, node="bob", link="ab", base_dir=tmp_path)
        with pytest.raises(ValueError, match="already used"):
            await bob.start()
        psk.write_bytes(bytes(range(255, -1, -1)) * 2)  # the operator's fix: a fresh secret
        again = LinkService(cfg, node="bob", link="ab", base_dir=tmp_path)
        await again.start()  # same port, same store: both were released
        try:
            return again.state
        finally:
            await again.close()

    assert asyncio.run(main()) == "running"


def test_two_services_key_over_loopback(tmp_path: Path) -> None:
    generate_keys("alice", tmp_path)
    generate_keys("bob", tmp_path)
    tags = two_site_tags(duration_s=9.0, qber=0.02, seed=9)
    submitted: list = []

    async def main() -> tuple[dict, dict, LinkService, LinkService]:
        bob_cfg = QkdLinkConfig.model_validate(
            _section(tmp_path, "analyser", "server", "tcp://127.0.0.1:0", 1)
        )
        bob = LinkService(bob_cfg, node="bob", link="ab", base_dir=tmp_path)
        await bob.start()
        alice_cfg = QkdLinkConfig.model_validate(
            _section(tmp_path, "sender", "client", bob.endpoint.address, 0)
        )
        alice = LinkService(alice_cfg, node="alice", link="ab", base_dir=tmp_path)
        await alice.start()
        reports = [asyncio.create_task(s.report_loop(submitted.extend)) for s in (alice, bob)]
        for a, b in zip(tags.alice, tags.bob, strict=True):
            alice.offer(a)
            bob.offer(b)
            await asyncio.sleep(0.02)
        for _ in range(600):
            quiet = not alice.engine.frames and not bob.engine.frames
            same = len(bob.engine.stored_blocks) == len(alice.engine.stored_blocks)
            if alice.engine.stored_blocks and quiet and same:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # one more report
        sa, sb = alice.status(), bob.status()
        await alice.close()
        await bob.close()
        for t in reports:
            t.cancel()
        return sa, sb, alice, bob

    sa, sb, alice, bob = asyncio.run(main())
    assert alice.engine.stored_blocks and alice.engine.stored_blocks == bob.engine.stored_blocks
    assert sb["lock_state"] == "locked" and sb["blocks_stored"] >= 1
    assert sa["role"] == "sender" and sa["channel_connected"] is True
    assert "lock locked" in qkd_link_line(sb) and "blocks" in qkd_link_line(sa)
    assert {r.tags["role"] for r in submitted} == {"sender", "analyser"}
    assert (tmp_path / "alice.channel.json").exists()  # the epoch record kept for a restart
    assert alice.state == bob.state == "stopped"


def test_two_daemons_compose_the_link(tmp_path: Path) -> None:
    """Two daemons (no instruments, no broker) each with a ``daemon.qkd_link`` section."""
    import yaml

    from controller._daemon_config import load_daemon_config
    from controller.daemon import Daemon

    generate_keys("alice", tmp_path)
    generate_keys("bob", tmp_path)
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    paths = {}
    for node, role, ch, site in (
        ("alice", "sender", "client", 0),
        ("bob", "analyser", "server", 1),
    ):
        raw = {
            "node": node,
            "instruments": {},
            "daemon": {"link": "ab", "qkd_link": _section(tmp_path, role, ch, addr, site)},
        }
        paths[node] = tmp_path / f"{node}.yaml"
        paths[node].write_text(yaml.safe_dump(raw))
    tags = two_site_tags(duration_s=9.0, qber=0.02, seed=9)

    async def main() -> tuple[dict, dict, dict, Daemon, Daemon]:
        bob = Daemon(load_daemon_config(paths["bob"]))
        alice = Daemon(load_daemon_config(paths["alice"]))
        await bob.start()
        await alice.start()
        assert alice.qkd_link is not None and bob.qkd_link is not None
        for a, b in zip(tags.alice, tags.bob, strict=True):  # as the acquisition would
            alice.qkd_link.offer(a)
            bob.qkd_link.offer(b)
            await asyncio.sleep(0.02)
        ea, eb = alice.qkd_link.engine, bob.qkd_link.engine
        for _ in range(600):
            if ea.stored_blocks and len(eb.stored_blocks) == len(ea.stored_blocks):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        sa, sb = alice.status()["qkd_link"], bob.status()["qkd_link"]
        report = await alice.shutdown()
        await bob.shutdown()
        return sa, sb, report, alice, bob

    sa, sb, report, alice, bob = asyncio.run(main())
    assert alice.qkd_link.engine.stored_blocks == bob.qkd_link.engine.stored_blocks
    assert sb["lock_state"] == "locked" and sb["blocks_stored"] >= 1
    assert sa["state"] == "running" and sa["blocks_stored"] == sb["blocks_stored"]
    assert alice.qkd_link.state == bob.qkd_link.state == "stopped"
    assert "elapsed_s" in report
