"""Key files: created by ``qnet keys generate``, secret mode 0600, secrets never shown."""

import logging
import os
import stat

import pytest
from typer.testing import CliRunner

from channel import KeyFileError, generate_keys, load_key_pair, load_public_key
from controller.cli import app

runner = CliRunner()


def test_cli_generates_pinnable_pair_and_never_prints_the_secret(tmp_path):
    res = runner.invoke(app, ["keys", "generate", "--node", "alice", "--dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    pub, sec = tmp_path / "alice.key", tmp_path / "alice.key_secret"
    assert stat.S_IMODE(os.stat(sec).st_mode) == 0o600
    pair = load_key_pair(sec)
    assert load_public_key(pub) == pair.public
    assert "secret-key" not in pub.read_text()
    assert pair.secret.decode() not in res.output
    assert pair.secret.decode() not in repr(pair)
    assert pair.public.decode() in res.output
    show = runner.invoke(app, ["keys", "show", str(sec)])
    assert show.exit_code == 0 and show.output.strip() == pair.public.decode()


def test_existing_key_not_replaced(tmp_path):
    generate_keys("bob", tmp_path)
    res = runner.invoke(app, ["keys", "generate", "--node", "bob", "--dir", str(tmp_path)])
    assert res.exit_code == 2 and "exists" in res.output
    with pytest.raises(KeyFileError, match="exists"):
        generate_keys("bob", tmp_path)


def test_readable_secret_refused(tmp_path):
    _, sec = generate_keys("carol", tmp_path)
    os.chmod(sec, 0o644)
    with pytest.raises(KeyFileError, match="mode 0644"):
        load_key_pair(sec)


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ('curve\n    public-key = "short"\n', "not 40 Z85 characters"),
        ("nothing here\n", "must hold public-key and secret-key"),
    ],
)
def test_malformed_key_file_named_without_echoing_it(tmp_path, text, msg, caplog):
    p = tmp_path / "x.key_secret"
    p.write_text(text)
    os.chmod(p, 0o600)
    with caplog.at_level(logging.DEBUG), pytest.raises(KeyFileError, match=msg) as info:
        load_key_pair(p)
    assert "short" not in str(info.value)


def test_mismatched_pair_refused(tmp_path):
    _, a = generate_keys("a", tmp_path)
    _, b = generate_keys("b", tmp_path)
    lines_a, lines_b = a.read_text().splitlines(), b.read_text().splitlines()
    mixed = [ln for ln in lines_a if "secret-key" not in ln] + [
        ln for ln in lines_b if "secret-key" in ln
    ]
    a.write_text("\n".join(mixed) + "\n")
    with pytest.raises(KeyFileError, match="does not belong"):
        load_key_pair(a)


def test_bad_node_name(tmp_path):
    res = runner.invoke(app, ["keys", "generate", "--node", "../x", "--dir", str(tmp_path)])
    assert res.exit_code == 2 and "node name" in res.output


def test_cli_writes_a_pre_shared_secret_once(tmp_path):
    path = tmp_path / "sub" / "alice-bob.psk"
    res = runner.invoke(app, ["keys", "psk", str(path), "--bytes", "1024"])
    assert res.exit_code == 0, res.output
    data = path.read_bytes()
    assert len(data) == 1024 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert data.hex() not in res.output and "trusted path" in res.output
    again = runner.invoke(app, ["keys", "psk", str(path)])
    assert again.exit_code == 2 and "exists" in again.output and "--overwrite" in again.output
    assert path.read_bytes() == data  # not replaced
    small = runner.invoke(app, ["keys", "psk", str(tmp_path / "x.psk"), "--bytes", "16"])
    assert small.exit_code == 2 and not (tmp_path / "x.psk").exists()
