"""``qnet analyze`` and ``qnet sample`` against an independent numpy computation."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from controller.cli import app

sys.path.insert(0, str(Path(__file__).parents[1] / "coincidence"))
import ptu_writer as w

runner = CliRunner()

ALICE = [0, 1, 2, 3]  # H, V, D, A
BOB = [4, 5, 6, 7]
DELAYS = np.array([0, 700, -300, 1500, 9000, 9400, 8800, 10100], dtype=np.int64)
DURATION_PS = 200 * 10**9  # 0.2 s
WINDOW = 600


def make_sample(seed=0, n_pairs=20000, noise_per_channel=4000, q_err=0.05):
    """8-channel BBM92-like tags: (timestamps, channels) with known delays and error rate."""
    rng = np.random.default_rng(seed)
    t = rng.integers(10**6, DURATION_PS - 10**6, n_pairs)
    a_lab = rng.integers(0, 4, n_pairs)
    b_basis = rng.integers(0, 2, n_pairs)
    same = b_basis == a_lab // 2
    flip = rng.random(n_pairs) < q_err
    b_bit = np.where(same, (a_lab % 2) ^ flip, rng.integers(0, 2, n_pairs))
    b_lab = 2 * b_basis + b_bit
    ca = np.asarray(ALICE)[a_lab]
    cb = np.asarray(BOB)[b_lab]
    jit = lambda: np.round(rng.normal(0, 30, n_pairs)).astype(np.int64)  # noqa: E731
    ts = np.concatenate([t + DELAYS[ca] + jit(), t + DELAYS[cb] + jit()])
    ch = np.concatenate([ca, cb])
    nt = rng.integers(0, DURATION_PS, 8 * noise_per_channel)
    nc = np.repeat(np.arange(8), noise_per_channel)
    ts = np.concatenate([ts, nt])
    ch = np.concatenate([ch, nc])
    order = np.argsort(ts, kind="stable")
    return ts[order].astype(np.int64), ch[order].astype(np.uint8)


def ref_matrix(ts, ch, delays, window, n=8):
    """All pairs with |dt| <= window / 2 after subtracting the delays (numpy searchsorted)."""
    half = window / 2
    per = [np.sort(ts[ch == c] - delays[c]) for c in range(n)]
    m = np.zeros((n, n), np.int64)
    for i in range(n):
        for j in range(i + 1, n):
            hi = np.searchsorted(per[j], per[i] + math.floor(half), side="right")
            lo = np.searchsorted(per[j], per[i] - math.floor(half), side="left")
            m[i, j] = m[j, i] = int(np.sum(hi - lo))
    return m


def h2(p):
    return 0.0 if p in (0.0, 1.0) else -p * math.log2(p) - (1 - p) * math.log2(1 - p)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    d = tmp_path_factory.mktemp("analyze")
    ts, ch = make_sample()
    npz = d / "sample.npz"
    np.savez(npz, timestamps=ts, channels=ch, begin_ps=np.int64(0), end_ps=np.int64(DURATION_PS))
    return d, ts, ch, npz


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def check_error(result, *fragments, code=2):
    assert result.exit_code == code, (result.stdout, result.stderr)
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in result.stdout + result.stderr
    for f in fragments:
        assert f in err, err


def test_json_equals_independent_numpy(sample):
    _, ts, ch, npz = sample
    delays = ",".join(str(int(x)) for x in DELAYS)
    r = run(
        "analyze", npz, "--json", "--window-ps", WINDOW, "--delays-ps", delays,
        "--roles", "alice=0,1,2,3 bob=4,5,6,7", "--f-ec", 1.1,
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    T = DURATION_PS * 1e-12
    singles = np.bincount(ch, minlength=8)
    m = ref_matrix(ts, ch, DELAYS, WINDOW)
    assert d["n_channels"] == 8
    assert d["duration_s"] == pytest.approx(T)
    np.testing.assert_array_equal(d["singles"], singles)
    np.testing.assert_allclose(d["singles_rate_hz"], singles / T)
    np.testing.assert_array_equal(d["coincidences"], m)
    lags = 2 * (WINDOW // 2) + 1  # integer lags of the closed window
    acc = np.outer(singles, singles) * lags * 1e-12 / T
    np.fill_diagonal(acc, 0)
    np.testing.assert_allclose(d["accidentals"], acc, rtol=1e-9)
    car = np.asarray(d["car"], dtype=float)
    off = ~np.eye(8, dtype=bool)
    np.testing.assert_allclose(car[off], (m / np.where(acc > 0, acc, np.nan))[off], rtol=1e-9)
    # QBER per basis, phi+: right = same label
    q = {}
    for basis, (l0, l1) in (("Z", (0, 1)), ("X", (2, 3))):
        right = m[ALICE[l0], BOB[l0]] + m[ALICE[l1], BOB[l1]]
        wrong = m[ALICE[l0], BOB[l1]] + m[ALICE[l1], BOB[l0]]
        q[basis] = (right + wrong, wrong, wrong / (right + wrong))
        got = d["qber"][basis]
        assert (got["sifted"], got["errors"]) == (right + wrong, wrong)
        assert got["qber"] == pytest.approx(wrong / (right + wrong))
        assert got["sifted_rate_hz"] == pytest.approx((right + wrong) / T)
    assert 0.03 < q["Z"][2] < 0.08  # the generated 5 % error rate
    assert d["sifted_rate_hz"] == pytest.approx((q["Z"][0] + q["X"][0]) / T)
    secure = sum(
        max(0.0, q[k][0] / T * (1 - 1.1 * h2(q[k][2]) - h2(q[o][2])))
        for k, o in (("Z", "X"), ("X", "Z"))
    )
    assert d["secure_key_rate_bps"] == pytest.approx(secure, rel=1e-9)
    assert secure > 0


def test_ptu_gives_same_numbers_as_npz(sample):
    d, ts, ch, npz = sample
    ptu = d / "sample.ptu"
    # HydraHarp V2 at 1 ps: ticks are ps; no sync, no markers; acquisition = the duration
    ev = w.Events(ts, ch.astype(np.int64), np.empty(0, np.int64), np.empty(0, np.int64))
    w.write_ptu(ptu, "hydraharp2", ev, acquisition_time_ms=DURATION_PS // 10**9,
                n_input_channels=8)  # fmt: skip
    args = ["--json", "--window-ps", WINDOW, "--roles", "alice=0,1,2,3 bob=4,5,6,7"]
    args += ["--delays-ps", ",".join(str(int(x)) for x in DELAYS)]
    a = json.loads(run("analyze", npz, *args).stdout)
    r = run("analyze", ptu, *args, "--sync-channel", "drop")
    assert r.exit_code == 0, r.stderr
    b = json.loads(r.stdout)
    for key in ("singles", "coincidences", "accidentals", "qber", "secure_key_rate_bps"):
        assert a[key] == b[key], key
    assert b["duration_ps"] == DURATION_PS


def test_channels_default_from_data_and_table_output(sample):
    _, _, _, npz = sample
    r = run("analyze", npz, "--roles", "alice=0,1,2,3 bob=4,5,6,7", "--bell-state", "phi+")
    assert r.exit_code == 0, r.stderr
    for title in ("Singles", "Coincidences", "CAR", "QBER", "Key rates", "secure key rate"):
        assert title in r.stdout
    r = run("analyze", npz, "--json")
    d = json.loads(r.stdout)
    assert d["n_channels"] == 8
    assert d["qber"] is None and "roles" in d["note"]


def test_roles_from_yaml_file(sample, tmp_path):
    _, _, _, npz = sample
    roles = tmp_path / "roles.yaml"
    roles.write_text(
        "alice: {H: 0, V: 1, D: 2, A: 3}\nbob: {H: 4, V: 5, D: 6, A: 7}\nbell_state: phi-\n"
    )
    a = json.loads(run("analyze", npz, "--json", "--roles", roles).stdout)
    assert a["roles"]["bell_state"] == "phi-"
    b = json.loads(run("analyze", npz, "--json", "--roles", "alice=0,1,2,3 bob=4,5,6,7",
                       "--bell-state", "phi-").stdout)  # fmt: skip
    assert a["qber"] == b["qber"]


def test_find_delay(sample):
    _, _, _, npz = sample
    r = run("analyze", npz, "--find-delay", 0, 4, "--json", "--max-delay-ps", 50000)
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert abs(d["delay_ps"] - int(DELAYS[4] - DELAYS[0])) <= 20
    assert d["significance"] > 6
    r = run("analyze", npz, "--find-delay", 2, 7, "--max-delay-ps", 50000)
    assert r.exit_code == 0, r.stderr
    assert "Delay of channel 7 relative to channel 2" in r.stdout


def test_find_delay_no_peak_exits_1(tmp_path):
    rng = np.random.default_rng(3)
    ts = np.sort(rng.integers(0, 10**11, 4000))
    p = tmp_path / "noise.npz"
    np.savez(p, timestamps=ts, channels=rng.integers(0, 2, 4000).astype(np.uint8))
    r = run("analyze", p, "--find-delay", 0, 1, "--max-delay-ps", 20000)
    check_error(r, "no delay found", code=1)


def test_bad_input_exits_2(sample, tmp_path):
    _, _, _, npz = sample
    check_error(run("analyze", tmp_path / "missing.npz"), "missing.npz", "no such file")
    check_error(run("analyze", npz, "--window-ps", 0), "--window-ps must be positive")
    check_error(run("analyze", npz, "--delays-ps", "0,1,2"), "--delays-ps has 3 values", "8")
    check_error(run("analyze", npz, "--delays-ps", "0,x"), "item 1 ('x')")
    check_error(run("analyze", npz, "--channels", 4), "channel 7 is out of range", "--channels")
    check_error(run("analyze", npz, "--channels", 4, "--delays-ps", "0,0"), "--delays-ps has 2")
    check_error(run("analyze", npz, "--roles", "alice=0,1,2 bob=4,5,6,7"), "alice needs 2")
    check_error(run("analyze", npz, "--roles", "alice=0,1,2,3 bob=4,5,6,9"), "channel 9")
    check_error(run("analyze", npz, "--roles", "carol=1,2"), "--roles")
    check_error(run("analyze", npz, "--roles", tmp_path / "nope.yaml"), "does not exist")
    check_error(run("analyze", npz, "--bell-state", "phi+"), "--bell-state needs --roles")
    check_error(
        run("analyze", npz, "--roles", "alice=0,1,2,3 bob=4,5,6,7", "--bell-state", "xx"),
        "bell_state",
    )
    check_error(run("analyze", npz, "--f-ec", 0.5), "--f-ec")
    check_error(run("analyze", npz, "--key-basis", "Y"), "--key-basis")
    check_error(run("analyze", npz, "--sync-channel", "foo"), "--sync-channel")
    check_error(run("analyze", npz, "--find-delay", 3, 3), "two different channels")
    check_error(run("analyze", npz, "--find-delay", 0, 9), "channel 9 (CH_B) has no tags")
    foreign = tmp_path / "foreign.ptu"
    foreign.write_bytes(b"GIF89a" + bytes(200))
    check_error(run("analyze", foreign), "not a PicoQuant PTU file")
    good = tmp_path / "good.ptu"
    w.write_ptu(good, "picoharp", w.random_events("picoharp", 100))
    cut = tmp_path / "cut.ptu"
    cut.write_bytes(good.read_bytes()[:-7])
    check_error(run("analyze", cut), "truncated PTU record section")
    t3 = tmp_path / "t3.ptu"
    t3.write_bytes(w.header_bytes(w.RT_HYDRAHARP2_T3, 1e-12, 0))
    check_error(run("analyze", t3), "T3", "T2 files only")
    csv = tmp_path / "x.csv"
    csv.write_text("1,2")
    check_error(run("analyze", csv), "unknown tag file type")
    bad_npz = tmp_path / "bad.npz"
    np.savez(bad_npz, timestamps=np.arange(3))
    check_error(run("analyze", bad_npz), "no 'channels' array")


def test_delayed_progress_shows_only_after_delay():
    from controller._cli_analyze import DelayedProgress

    with DelayedProgress("x", delay_s=60.0, force=True) as slow:
        slow(10, 100)
    assert not slow.shown
    with DelayedProgress("x", delay_s=0.0, force=True) as quick:
        quick(10, 100)
        quick(100, 100)
    assert quick.shown
    assert quick.progress is not None
    assert quick.progress.tasks[0].completed == 100


def test_sample_runs(tmp_path):
    r = run("sample", "--out", tmp_path, "--duration-s", 1, "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    run_dir = Path(d["run_dir"])
    assert run_dir.parent == tmp_path
    png = Path(d["png"])
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "sample.npz").is_file()
    assert json.loads((run_dir / "analysis.json").read_text())["qber"] == d["qber"]
    assert 0.02 < d["qber"]["Z"]["qber"] < 0.05
    assert 0.02 < d["qber"]["X"]["qber"] < 0.05
    true = np.asarray(d["true_delays_ps"]) - d["true_delays_ps"][0]
    assert np.all(np.abs(np.asarray(d["found_delays_ps"]) - true) <= 25)
    assert d["secure_key_rate_bps"] > 0
    r = run("sample", "--out", tmp_path, "--duration-s", 0.5)
    assert r.exit_code == 0, r.stderr
    assert "files written to" in r.stdout and "QBER" in r.stdout


def test_chunked_file_counts_equal_whole(sample):
    """The file reader's chunk boundaries and the streaming counter agree with one pass."""
    from controller._cli_analyze import count_file

    d, ts, ch, _ = sample
    ptu = d / "chunks.ptu"
    ev = w.Events(ts, ch.astype(np.int64), np.empty(0, np.int64), np.empty(0, np.int64))
    w.write_ptu(ptu, "hydraharp2", ev, n_input_channels=8)
    kw = dict(window_ps=WINDOW, delays_ps=list(DELAYS), n_channels=None, sync_channel="drop")
    whole = count_file(str(ptu), **kw)
    parts = count_file(str(ptu), chunk_records=997, **kw)
    np.testing.assert_array_equal(parts.coincidences, whole.coincidences)
    np.testing.assert_array_equal(parts.singles, whole.singles)
    assert parts.duration_ps == whole.duration_ps
    np.testing.assert_array_equal(whole.coincidences, ref_matrix(ts, ch, DELAYS, WINDOW))
    # time ranges counted by parallel threads, stitched: the same counts (read here and
    # counted in ranges, or each range decoded by its worker)
    for workers, min_range in ((1, 10**9), (2, 10**9), (3, 10**9), (1, 5_000), (2, 7_000)):
        par = count_file(str(ptu), chunk_records=997, workers=workers, segment_tags=3_000,
                         min_range_tags=min_range, **kw)  # fmt: skip
        np.testing.assert_array_equal(par.coincidences, whole.coincidences)
        np.testing.assert_array_equal(par.singles, whole.singles)
        assert par.duration_ps == whole.duration_ps
    # an npz is split into time ranges that the workers read and count themselves
    _, _, _, npz = sample
    one = count_file(str(npz), workers=1, **kw)
    assert one.duration_ps == DURATION_PS
    np.testing.assert_array_equal(one.coincidences, whole.coincidences)
    for workers in (1, 2, 3):
        par = count_file(str(npz), workers=workers, chunk_records=1_001, min_range_tags=5_000,
                         **kw)  # fmt: skip
        np.testing.assert_array_equal(par.coincidences, one.coincidences)
        np.testing.assert_array_equal(par.singles, one.singles)
        assert par.duration_ps == one.duration_ps


def test_channel_out_of_range_names_file_and_needed_count(sample):
    """The counter's ChannelError becomes one line: file, highest channel, --channels hint."""
    _, _, _, npz = sample
    r = run("analyze", npz, "--channels", 6)
    check_error(r, f"{npz}: channel 7 is out of range for 6 channels (0..5)",
                "raise --channels to at least 8")  # fmt: skip


def test_sync_channel_on_a_detector_exits_2(tmp_path):
    p = tmp_path / "mh.ptu"
    w.write_ptu(p, "multiharp", w.random_events("multiharp", 200, seed=1), n_input_channels=4)
    check_error(run("analyze", p, "--sync-channel", 2), "sync_channel 2 is one of the file's 4")


def test_channels_from_the_data_in_one_pass(sample, tmp_path, monkeypatch):
    """Without --channels the file is read once (no channel scan first), same report."""
    import coincidence._files as files
    from controller._cli_analyze import UsageError, count_file

    _, ts, ch, npz = sample
    ptu = tmp_path / "bare.ptu"  # no HW_InpChannels: the old hint decoded the whole file
    ev = w.Events(ts, ch.astype(np.int64), np.empty(0, np.int64), np.empty(0, np.int64))
    recs = w.write_ptu(ptu, "hydraharp2", ev, n_input_channels=0)
    decoded = []
    real_decode = files._decode_t2
    monkeypatch.setattr(
        files, "_decode_t2", lambda r, *a: decoded.append(r.size) or real_decode(r, *a)
    )
    read = []
    real_read = files._NpyMember.read
    monkeypatch.setattr(
        files._NpyMember, "read", lambda self, n: read.append(n) or real_read(self, n)
    )
    kw = dict(window_ps=WINDOW, delays_ps=None, n_channels=None, sync_channel="drop")
    rep = count_file(str(ptu), chunk_records=4099, **kw)
    assert sum(decoded) == recs.size
    assert rep.n_channels == 8
    np.testing.assert_array_equal(rep.coincidences, ref_matrix(ts, ch, np.zeros(8), WINDOW))
    rep = count_file(str(npz), **kw)
    assert sum(read) == 2 * ts.size  # timestamps and channels, once each
    assert rep.n_channels == 8
    np.testing.assert_array_equal(rep.singles, np.bincount(ch, minlength=8))
    # a longer delay list names channels without tags; a shorter one is refused
    rep = count_file(str(npz), **{**kw, "delays_ps": [0] * 10})
    assert rep.n_channels == 10 and rep.singles[8:].sum() == 0
    with pytest.raises(UsageError, match="--delays-ps has 3 values but there are 8 channels"):
        count_file(str(npz), **{**kw, "delays_ps": [0, 0, 0]})
