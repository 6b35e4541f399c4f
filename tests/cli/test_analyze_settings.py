"""``qnet sample`` stores roles, delays and window in its npz; ``qnet analyze`` uses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_analyze import DELAYS, DURATION_PS, make_sample, run

from coincidence import TagBatch, TagFileError, read_npz_metadata, write_npz

ROLES = {"alice": {"H": 0, "V": 1, "D": 2, "A": 3}, "bob": {"H": 4, "V": 5, "D": 6, "A": 7}}


@pytest.fixture(scope="module")
def batch() -> TagBatch:
    ts, ch = make_sample(seed=4, noise_per_channel=100_000)
    return TagBatch(ts, ch, 0, DURATION_PS)


def test_sample_file_analyses_without_options(tmp_path: Path) -> None:
    r = run("sample", "--out", tmp_path, "--duration-s", 0.5, "--window-ps", 300, "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    npz = Path(d["run_dir"]) / "sample.npz"
    meta = read_npz_metadata(npz)
    assert meta["delays_ps"] == d["found_delays_ps"] and meta["window_ps"] == 300
    assert meta["roles"]["alice"] == ROLES["alice"] and meta["roles"]["bob"] == ROLES["bob"]
    a = run("analyze", npz, "--json")
    assert a.exit_code == 0, a.stderr
    got = json.loads(a.stdout)
    assert got["settings_from_file"] == ["roles", "delays_ps", "window_ps"]
    assert got["window_ps"] == 300 and got["delays_ps"] == d["found_delays_ps"]
    assert got["coincidences"] == d["coincidences"] and got["qber"] == d["qber"]
    # explicit options override the file's settings
    o = run("analyze", npz, "--json", "--window-ps", 1000, "--delays-ps", ",".join(["0"] * 8))
    got = json.loads(o.stdout)
    assert got["window_ps"] == 1000 and got["delays_ps"] == [0] * 8
    assert got["settings_from_file"] == ["roles"]
    t = run("analyze", npz)
    assert "settings from the file's metadata: roles, delays_ps, window_ps" in t.stdout


def test_metadata_round_trip_and_bad_metadata(tmp_path: Path, batch: TagBatch) -> None:
    p = tmp_path / "m.npz"
    write_npz(p, batch, metadata={"delays_ps": [int(x) for x in DELAYS], "roles": ROLES})
    assert read_npz_metadata(p)["delays_ps"] == DELAYS.tolist()
    plain = tmp_path / "plain.npz"
    write_npz(plain, batch)
    assert read_npz_metadata(plain) == {}
    with pytest.raises(TagFileError, match="not JSON-serialisable"):
        write_npz(tmp_path / "x.npz", batch, metadata={"f": object()})
    bad = tmp_path / "bad.npz"
    write_npz(bad, batch, metadata={"delays_ps": [0, "x"]})
    r = run("analyze", bad)
    assert r.exit_code == 2 and "metadata delays_ps must be a list of integers" in r.stderr


def test_near_50_percent_qber_without_delays_says_delays_are_missing(
    tmp_path: Path, batch: TagBatch
) -> None:
    p = tmp_path / "nodelays.npz"
    write_npz(p, batch)
    r = run("analyze", p, "--json", "--roles", "alice=0,1,2,3 bob=4,5,6,7")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["qber"]["Z"]["qber"] > 0.35
    assert "delays are probably missing" in d["note"] and "--find-delay" in d["note"]
    assert "--delays-ps" in d["note"]
    delays = ",".join(str(int(x)) for x in DELAYS)
    r = run("analyze", p, "--json", "--roles", "alice=0,1,2,3 bob=4,5,6,7", "--delays-ps", delays)
    d = json.loads(r.stdout)
    assert d["qber"]["Z"]["qber"] < 0.1
    assert d["note"] is None or "probably missing" not in d["note"]
