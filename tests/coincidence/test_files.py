"""Tag files: PTU T2 reader (against known events and tttrlib) and npz read/write."""

from __future__ import annotations

import itertools
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coincidence import (
    TagBatch,
    TagFileError,
    count_records,
    iter_npz,
    iter_npz_range,
    iter_ptu,
    iter_tag_file,
    read_npz,
    read_ptu,
    read_ptu_header,
    read_ptu_markers,
    read_tag_file,
    split_npz,
    write_npz,
)

sys.path.insert(0, str(Path(__file__).parent))
import ptu_writer as w
from test_counter import reference

DEVICES = ["picoharp", "hydraharp1", "hydraharp2", "multiharp"]


def expected(device, ev, sync_channel=4):
    """Photon/sync tags in ps and channels as the reader should return them."""
    _, res_s, _ = w.DEVICES[device]
    res = round(res_s * 1e12)
    keep = ev.channels >= 0 if sync_channel is None else np.ones(ev.channels.size, bool)
    ch = np.where(ev.channels < 0, sync_channel if sync_channel is not None else 0, ev.channels)
    return ev.ticks[keep] * res, ch[keep].astype(np.uint8), res


def concat(batches):
    for a, b in itertools.pairwise(batches):
        assert b.begin_ps == a.end_ps
    return TagBatch.concatenate(batches)


@pytest.mark.parametrize("device", DEVICES)
def test_round_trip_known_events(tmp_path, device):
    ev = w.random_events(device, 3000, seed=3, n_markers=7)
    path = tmp_path / f"{device}.ptu"
    recs = w.write_ptu(path, device, ev, acquisition_time_ms=None)
    h = read_ptu_header(path)
    assert h.n_records == recs.size
    assert h.n_input_channels == 4
    assert h.tags["File_Comment(0)"] == "qnet test file"
    assert h.tags["CreatorSW_Name"] == "qnet \u00e9"
    np.testing.assert_array_equal(h.tags["Some_Array"], [1.0, 2.0, 3.0])
    assert h.tags["Some_Blob"] == bytes(range(24))
    b = read_ptu(path)
    ts, ch, res = expected(device, ev)
    np.testing.assert_array_equal(b.timestamps, ts)
    np.testing.assert_array_equal(b.channels, ch)
    assert b.begin_ps == 0
    assert b.end_ps == int(ts[-1]) + 1
    # overflow records were really exercised: tags span many wrap-around periods
    assert ts[-1] > 30 * w.DEVICES[device][2] * res
    mt, mm = read_ptu_markers(path)
    exp_mt = (ev.marker_ticks | ev.marker_masks) if device == "picoharp" else ev.marker_ticks
    np.testing.assert_array_equal(mt, exp_mt * res)
    np.testing.assert_array_equal(mm, ev.marker_masks)


def test_hydraharp_v2_single_overflow_records(tmp_path):
    """Old-style overflow records (count 1 each) decode the same as counted ones."""
    ev = w.random_events("hydraharp2", 500, seed=5)
    a, b = tmp_path / "multi.ptu", tmp_path / "single.ptu"
    ra = w.write_ptu(a, "hydraharp2", ev, multi_overflow=True)
    rb = w.write_ptu(b, "hydraharp2", ev, multi_overflow=False)
    assert rb.size > ra.size
    ba, bb = read_ptu(a), read_ptu(b)
    np.testing.assert_array_equal(ba.timestamps, bb.timestamps)
    np.testing.assert_array_equal(ba.channels, bb.channels)


def test_sync_channel_options(tmp_path):
    ev = w.random_events("multiharp", 400, seed=2)
    path = tmp_path / "mh.ptu"
    w.write_ptu(path, "multiharp", ev, n_input_channels=8)
    n_sync = int(np.sum(ev.channels < 0))
    assert n_sync > 0
    auto = read_ptu(path)
    assert int(np.sum(auto.channels == 8)) == n_sync  # HW_InpChannels
    # an explicit channel must lie above the detection channels (HW_InpChannels = 8)
    nine = read_ptu(path, sync_channel=9)
    ts, ch, _ = expected("multiharp", ev, sync_channel=9)
    np.testing.assert_array_equal(nine.channels, ch)
    dropped = read_ptu(path, sync_channel="drop")
    ts, ch, _ = expected("multiharp", ev, sync_channel=None)
    np.testing.assert_array_equal(dropped.timestamps, ts)
    np.testing.assert_array_equal(dropped.channels, ch)
    with pytest.raises(TagFileError, match="sync_channel 300"):
        iter_ptu(path, sync_channel=300)


def test_acquisition_time_sets_final_end(tmp_path):
    ev = w.random_events("hydraharp2", 100, seed=1)
    last_ps = int(ev.ticks[-1])
    acq_ms = last_ps // 10**9 + 5
    path = tmp_path / "a.ptu"
    w.write_ptu(path, "hydraharp2", ev, acquisition_time_ms=acq_ms)
    batches = list(iter_ptu(path, chunk_records=17))
    assert batches[0].begin_ps == 0
    assert batches[-1].end_ps == acq_ms * 10**9
    assert concat(batches).duration_ps == acq_ms * 10**9


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1])
def test_cross_check_against_tttrlib(tmp_path, device, seed):
    tttrlib = pytest.importorskip("tttrlib")
    ev = w.random_events(device, 2500, seed=seed, n_markers=9)
    path = tmp_path / f"{device}_{seed}.ptu"
    w.write_ptu(path, device, ev, acquisition_time_ms=1, blob=False)
    t = tttrlib.TTTR(str(path), "PTU")
    res_s = t.header.macro_time_resolution
    mt = np.asarray(t.macro_times, dtype=np.int64)
    rc = np.asarray(t.routing_channels, dtype=np.int64)
    et = np.asarray(t.event_types)
    photon = et == 0
    special = et == 1
    sync = special & (rc == 0) & (device != "picoharp")
    marker = special & ~sync
    ours = read_ptu(path, sync_channel=200)
    theirs_ps = np.round(mt * res_s * 1e12).astype(np.int64)
    # tttrlib: photons then syncs, each in time order; ours: one merged time-ordered stream
    ours_photon = ours.channels != 200
    np.testing.assert_array_equal(ours.timestamps[ours_photon], theirs_ps[photon])
    np.testing.assert_array_equal(ours.channels[ours_photon], rc[photon])
    np.testing.assert_array_equal(ours.timestamps[~ours_photon], theirs_ps[sync])
    mk_t, mk_m = read_ptu_markers(path)
    np.testing.assert_array_equal(mk_t, theirs_ps[marker])
    np.testing.assert_array_equal(mk_m, rc[marker])


@settings(max_examples=25, deadline=None)
@given(
    device=st.sampled_from(DEVICES),
    n=st.integers(0, 60),
    chunk=st.integers(1, 70),
    seed=st.integers(0, 2**16),
)
def test_chunked_reading_is_identical_for_any_chunk_size(tmp_path_factory, device, n, chunk, seed):
    path = tmp_path_factory.mktemp("chunks") / "c.ptu"
    ev = w.random_events(device, n, seed=seed, n_markers=3, span_periods=3.0)
    # force equal timestamps on several channels (a chunk boundary may fall among them)
    if n > 6:
        ev.ticks[3:6] = ev.ticks[3]
    w.write_ptu(path, device, ev)
    whole = read_ptu(path)
    batches = list(iter_ptu(path, chunk_records=chunk))
    if n == 0:
        assert len(whole) == 0
        return
    got = concat(batches)
    np.testing.assert_array_equal(got.timestamps, whole.timestamps)
    np.testing.assert_array_equal(got.channels, whole.channels)
    ts, ch, _ = expected(device, ev)
    assert (got.begin_ps, got.end_ps) == (whole.begin_ps, whole.end_ps) == (0, int(ts[-1]) + 1)
    np.testing.assert_array_equal(got.timestamps, ts)
    np.testing.assert_array_equal(got.channels, ch)


def test_progress_and_count_records(tmp_path):
    ev = w.random_events("picoharp", 1000, seed=4)
    path = tmp_path / "p.ptu"
    recs = w.write_ptu(path, "picoharp", ev)
    assert count_records(path) == recs.size
    seen = []
    list(iter_tag_file(path, chunk_records=300, progress=lambda d, t: seen.append((d, t))))
    assert seen[-1] == (recs.size, recs.size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert len(seen) == -(-recs.size // 300)


# ------------------------------------------------------------------------- errors


def _good(tmp_path, device="hydraharp2", **kw):
    ev = w.random_events(device, 200, seed=0)
    path = tmp_path / "good.ptu"
    w.write_ptu(path, device, ev, **kw)
    return path


def test_truncated_record_section(tmp_path):
    path = _good(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.ptu"
    cut.write_bytes(data[:-10])
    with pytest.raises(TagFileError, match=r"truncated PTU record section.*header announces"):
        iter_ptu(cut)
    with pytest.raises(TagFileError, match=r"cut\.ptu"):
        list(iter_tag_file(cut))


def test_truncated_header(tmp_path):
    data = _good(tmp_path).read_bytes()
    end = data.index(b"Header_End")
    for n in (5, 12, 100, end + 20):
        cut = tmp_path / f"h{n}.ptu"
        cut.write_bytes(data[:n])
        with pytest.raises(TagFileError, match="truncated PTU") as e:
            read_ptu_header(cut)
        assert f"h{n}.ptu" in str(e.value)


def test_foreign_file(tmp_path):
    path = tmp_path / "foreign.ptu"
    path.write_bytes(b"%PDF-1.4 this is not a tag file" + bytes(100))
    with pytest.raises(TagFileError, match="not a PicoQuant PTU file"):
        read_ptu(path)


def test_t3_file_is_refused(tmp_path):
    path = tmp_path / "t3.ptu"
    path.write_bytes(w.header_bytes(w.RT_HYDRAHARP2_T3, 1e-12, 0))
    with pytest.raises(TagFileError, match=r"HydraHarp V2 T3.*T2 files only.*MultiHarp T2"):
        read_ptu_header(path)


def test_unknown_record_type(tmp_path):
    path = tmp_path / "x.ptu"
    path.write_bytes(w.header_bytes(0x00ABCDEF, 1e-12, 0))
    with pytest.raises(TagFileError, match=r"unsupported PTU record type 0x00ABCDEF; supported"):
        read_ptu_header(path)


def test_missing_mandatory_tag(tmp_path):
    data = w.header_bytes(w.RT_HYDRAHARP2_T2, 1e-12, 0)
    data = data.replace(b"TTResult_NumberOfRecords", b"TTResult_SomethingElse__")
    path = tmp_path / "m.ptu"
    path.write_bytes(data)
    with pytest.raises(TagFileError, match="lacks the mandatory tag 'TTResult_NumberOfRecords'"):
        read_ptu_header(path)


def test_undefined_special_record(tmp_path):
    rec = np.asarray([(1 << 31) | (40 << 25) | 5], dtype="<u4")
    path = tmp_path / "bad.ptu"
    head = w.header_bytes(w.RT_HYDRAHARP2_T2, 1e-12, 1)
    path.write_bytes(head + rec.tobytes())
    with pytest.raises(TagFileError, match=rf"byte offset {len(head)}.*undefined channel code 40"):
        read_ptu(path)


def test_unsorted_records_give_clear_error(tmp_path):
    recs = np.asarray([(0 << 25) | 500, (1 << 25) | 100], dtype="<u4")
    path = tmp_path / "unsorted.ptu"
    path.write_bytes(w.header_bytes(w.RT_HYDRAHARP2_T2, 1e-12, 2) + recs.tobytes())
    with pytest.raises(TagFileError, match=r"unsorted\.ptu: bad tags.*decrease"):
        read_ptu(path)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(TagFileError, match="no such file"):
        iter_tag_file(tmp_path / "nope.ptu")
    other = tmp_path / "data.csv"
    other.write_text("1,2\n")
    with pytest.raises(TagFileError, match=r"unknown tag file type '.csv'"):
        iter_tag_file(other)


# ------------------------------------------------------------------------- npz


def _batch(n=1000, seed=0, begin=-50, extra=777):
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, 10**9, n)).astype(np.int64)
    ts[10:14] = ts[10]
    ch = rng.integers(0, 8, n).astype(np.uint8)
    return TagBatch(ts, ch, begin, int(ts[-1]) + extra)


def test_npz_round_trip_and_chunks(tmp_path):
    b = _batch()
    path = tmp_path / "t.npz"
    write_npz(path, b)
    got = read_npz(path)
    np.testing.assert_array_equal(got.timestamps, b.timestamps)
    np.testing.assert_array_equal(got.channels, b.channels)
    assert (got.begin_ps, got.end_ps) == (b.begin_ps, b.end_ps)
    assert count_records(path) == len(b)
    for chunk in (1, 3, 11, 999, 5000):
        batches = list(iter_npz(path, chunk_records=chunk))
        assert len(batches) >= min(len(b) // chunk, 2)
        c = concat(batches)
        np.testing.assert_array_equal(c.timestamps, b.timestamps)
        assert (c.begin_ps, c.end_ps) == (b.begin_ps, b.end_ps)


def test_npz_without_interval_and_compressed(tmp_path):
    b = _batch(200, seed=1)
    path = tmp_path / "plain.npz"
    np.savez_compressed(path, timestamps=b.timestamps.astype(np.uint64), channels=b.channels)
    got = read_tag_file(path)
    np.testing.assert_array_equal(got.timestamps, b.timestamps)
    assert (got.begin_ps, got.end_ps) == (int(b.timestamps[0]), int(b.timestamps[-1]) + 1)


def test_npz_empty(tmp_path):
    path = tmp_path / "e.npz"
    write_npz(path, TagBatch.empty(5, 90))
    got = read_npz(path)
    assert len(got) == 0
    assert (got.begin_ps, got.end_ps) == (5, 90)


def test_npz_errors(tmp_path):
    p = tmp_path / "missing.npz"
    np.savez(p, timestamps=np.arange(3))
    with pytest.raises(TagFileError, match=r"no 'channels' array \(arrays: timestamps\)"):
        read_npz(p)
    p = tmp_path / "mismatch.npz"
    np.savez(p, timestamps=np.arange(3), channels=np.zeros(2, np.uint8))
    with pytest.raises(TagFileError, match="'timestamps' has 3 entries but 'channels' has 2"):
        iter_npz(p)
    p = tmp_path / "float.npz"
    np.savez(p, timestamps=np.arange(3.0), channels=np.zeros(3, np.uint8))
    with pytest.raises(TagFileError, match="'timestamps' must be a 1-D integer array"):
        read_npz(p)
    p = tmp_path / "notzip.npz"
    p.write_bytes(b"hello")
    with pytest.raises(TagFileError, match="not an npz file"):
        read_npz(p)
    p = tmp_path / "unsorted.npz"
    np.savez(p, timestamps=np.asarray([5, 3]), channels=np.zeros(2, np.uint8))
    with pytest.raises(TagFileError, match=r"unsorted\.npz: bad tags.*decrease"):
        read_npz(p)
    p = tmp_path / "badch.npz"
    np.savez(p, timestamps=np.asarray([1, 3]), channels=np.asarray([0, 300]))
    with pytest.raises(TagFileError, match="channel 300 at index 1"):
        read_npz(p)


def test_npz_truncated(tmp_path):
    b = _batch(5000)
    p = tmp_path / "t.npz"
    write_npz(p, b)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(TagFileError, match=r"cut\.npz"):
        read_npz(cut)


def test_npz_members_are_what_numpy_writes(tmp_path):
    p = tmp_path / "x.npz"
    write_npz(p, _batch(20))
    with zipfile.ZipFile(p) as zf:
        assert sorted(zf.namelist()) == [
            "begin_ps.npy",
            "channels.npy",
            "end_ps.npy",
            "timestamps.npy",
        ]
    loaded = np.load(p)
    assert loaded["timestamps"].dtype == np.int64
    assert int(loaded["end_ps"]) > int(loaded["timestamps"][-1])


def test_n_channels_hint(tmp_path):
    from coincidence import n_channels_hint

    ev = w.random_events("multiharp", 300, seed=1)
    p = tmp_path / "m.ptu"
    w.write_ptu(p, "multiharp", ev, n_input_channels=6)
    assert n_channels_hint(p) == 7  # 6 inputs + the sync on channel 6
    assert n_channels_hint(p, sync_channel="drop") == 6
    q = tmp_path / "p.ptu"
    w.write_ptu(q, "picoharp", w.random_events("picoharp", 300, seed=1), n_input_channels=4)
    assert n_channels_hint(q) == 4
    z = tmp_path / "z.npz"
    write_npz(z, TagBatch(np.arange(5), np.asarray([0, 3, 11, 2, 1], np.uint8)))
    assert n_channels_hint(z) == 12


# ------------------------------------------------------------------------- review fixes


def test_npz_end_before_last_tag_is_refused(tmp_path):
    """An end_ps at or before the last tag is an error, not a silently longer interval."""
    ts = np.asarray([10, 20, 30])
    for end in (25, 30):
        p = tmp_path / f"end{end}.npz"
        np.savez(p, timestamps=ts, channels=np.zeros(3, np.uint8), end_ps=np.int64(end))
        for chunk in (1, 2, 5):
            with pytest.raises(
                TagFileError, match=rf"end{end}\.npz: end_ps {end} is not after the last tag at 30"
            ):
                list(iter_npz(p, chunk_records=chunk))
    p = tmp_path / "ok.npz"
    np.savez(p, timestamps=ts, channels=np.zeros(3, np.uint8), end_ps=np.int64(31))
    assert read_npz(p).end_ps == 31
    p = tmp_path / "empty.npz"
    np.savez(p, timestamps=np.empty(0, np.int64), channels=np.empty(0, np.uint8),
             begin_ps=np.int64(50), end_ps=np.int64(40))  # fmt: skip
    with pytest.raises(TagFileError, match=r"empty\.npz: end_ps 40 is before begin_ps 50"):
        read_npz(p)


def test_npz_begin_after_first_tag_is_refused(tmp_path):
    p = tmp_path / "begin.npz"
    np.savez(p, timestamps=np.asarray([10, 20]), channels=np.zeros(2, np.uint8),
             begin_ps=np.int64(15))  # fmt: skip
    with pytest.raises(TagFileError, match=r"begin\.npz: begin_ps 15 is after the first tag at 10"):
        read_npz(p)


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 6, 7])
def test_npz_unsorted_error_names_the_file_index(tmp_path, chunk):
    """The index is the tag's position in the file, whatever the chunking and carry."""
    p = tmp_path / "u.npz"
    np.savez(p, timestamps=np.asarray([10, 20, 30, 30, 40, 35, 50]), channels=np.zeros(7, np.uint8))
    with pytest.raises(TagFileError, match=r"u\.npz: bad tags: .*decrease at tag index 5: 40 ps"):
        list(iter_npz(p, chunk_records=chunk))


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 6, 7])
def test_npz_range_unsorted_error_names_the_file_index(tmp_path, chunk):
    """A mapped range emits chunks without a carry; a decrease is still named exactly."""
    p = tmp_path / "u.npz"
    np.savez(p, timestamps=np.asarray([10, 20, 30, 30, 40, 35, 50]), channels=np.zeros(7, np.uint8))
    (whole,) = split_npz(p, 1)
    with pytest.raises(TagFileError, match=r"u\.npz: bad tags: .*decrease at tag index 5: 40 ps"):
        list(iter_npz_range(whole, chunk_records=chunk))


@pytest.mark.parametrize("sync", ["drop", "auto"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 7, 8])
def test_ptu_unsorted_error_names_the_record(tmp_path, chunk, sync):
    """The record index and byte offset point at the same record, past overflows/markers/syncs."""
    recs = np.asarray(
        [
            (0 << 25) | 500,  # photon, ch 0
            (1 << 31) | (63 << 25) | 1,  # overflow
            (1 << 31) | (2 << 25) | 7,  # marker
            (1 << 31) | (0 << 25) | 550,  # sync
            (1 << 25) | 600,  # photon, ch 1
            (1 << 25) | 100,  # record 5: earlier than record 4
            (2 << 25) | 700,
        ],
        dtype="<u4",
    )
    head = w.header_bytes(w.RT_HYDRAHARP2_T2, 1e-12, recs.size)
    p = tmp_path / "u.ptu"
    p.write_bytes(head + recs.tobytes())
    where = rf"record 5 \(byte offset {len(head) + 20}\)"
    with pytest.raises(TagFileError, match=rf"u\.ptu: bad tags: .*decrease at {where}"):
        list(iter_ptu(p, chunk_records=chunk, sync_channel=sync))


def test_chunker_validates_each_tag_about_once(tmp_path, monkeypatch):
    """Chunks are not validated whole and again when split: ~1 order check per tag."""
    import coincidence._tags as tags

    b = _batch(2000, seed=4)
    p = tmp_path / "t.npz"
    write_npz(p, b)
    checked = []
    real = tags._first_decrease
    monkeypatch.setattr(tags, "_first_decrease", lambda ts: checked.append(ts.size) or real(ts))
    batches = list(iter_npz(p, chunk_records=97))
    assert sum(checked) <= 1.1 * len(b)  # the carried tags (one time each) are seen twice
    np.testing.assert_array_equal(concat(batches).timestamps, b.timestamps)


def test_sync_channel_on_a_detection_channel_is_refused(tmp_path):
    ev = w.random_events("multiharp", 400, seed=2)
    path = tmp_path / "mh.ptu"
    w.write_ptu(path, "multiharp", ev, n_input_channels=8)
    with pytest.raises(TagFileError, match=r"mh\.ptu: sync_channel 3 is one of the file's 8 detec"):
        iter_ptu(path, sync_channel=3)
    with pytest.raises(TagFileError, match="sync_channel 7 is one of"):
        iter_tag_file(path, sync_channel=7)
    # without HW_InpChannels: refused when a detection record is on the sync channel
    bare = tmp_path / "bare.ptu"
    recs = w.write_ptu(bare, "multiharp", ev, n_input_channels=0)
    h = read_ptu_header(bare)
    assert h.n_input_channels is None
    r = np.flatnonzero((recs >> 31 == 0) & ((recs >> 25) & 0x3F == 2))[0]
    msg = rf"bare\.ptu: record {r} \(byte offset {h.data_offset + 4 * r}\) is a detection on"
    with pytest.raises(TagFileError, match=msg + " channel 2, which sync_channel 2 also names"):
        list(iter_ptu(bare, sync_channel=2, chunk_records=50))
    assert int(np.sum(read_ptu(bare, sync_channel=5).channels == 5)) == int(np.sum(ev.channels < 0))


def test_channel_capacity(tmp_path):
    from coincidence import channel_capacity

    ev = w.random_events("multiharp", 100, seed=1)
    p = tmp_path / "m.ptu"
    w.write_ptu(p, "multiharp", ev, n_input_channels=6)
    assert channel_capacity(p) == (7, True)
    assert channel_capacity(p, sync_channel="drop") == (6, True)
    w.write_ptu(p, "multiharp", ev, n_input_channels=0)
    assert channel_capacity(p) == (65, False)
    assert channel_capacity(p, sync_channel=70) == (71, False)
    q = tmp_path / "p.ptu"
    w.write_ptu(q, "picoharp", w.random_events("picoharp", 50), n_input_channels=0)
    assert channel_capacity(q) == (15, False)
    z = tmp_path / "z.npz"
    write_npz(z, TagBatch(np.arange(3), np.asarray([0, 3, 1], np.uint8)))
    assert channel_capacity(z) == (256, False)


def _zero_filled_ptu(path: Path, n_records: int) -> Path:
    """A valid HydraHarp T2 header followed by zero records (channel 0 at time 0)."""
    with open(path, "wb") as f:
        f.write(w.header_bytes(w.RT_HYDRAHARP2_T2, 1e-12, n_records))
        f.write(b"\0" * (4 * n_records))
    return path


def test_zero_filled_ptu_is_counted_in_linear_time(tmp_path: Path) -> None:
    from coincidence import CoincidenceCounter

    p = _zero_filled_ptu(tmp_path / "zeros.ptu", 300_000)
    counter = CoincidenceCounter(5, 1_000)
    for batch in iter_ptu(p, chunk_records=70_000):  # the equal run straddles every chunk
        counter.process(batch)
    rep = counter.result()
    assert rep.singles.tolist() == [300_000, 0, 0, 0, 0]
    assert rep.coincidences.sum() == 0


def test_more_equal_tags_than_a_tagger_can_give_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import coincidence._files as files

    monkeypatch.setattr(files, "MAX_TAGS_AT_ONE_TIME", 1_000)
    p = _zero_filled_ptu(tmp_path / "zeros.ptu", 5_000)
    with pytest.raises(TagFileError, match=r"tags at the same time 0 ps, up to record \d+"):
        list(iter_ptu(p, chunk_records=600))


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(DEVICES),
    st.integers(0, 600),
    st.integers(1, 9),
    st.integers(0, 10_000),
    st.booleans(),
)
def test_ptu_time_ranges_give_the_whole_file(
    tmp_path_factory: pytest.TempPathFactory,
    device: str,
    n: int,
    n_ranges: int,
    seed: int,
    acq: bool,
) -> None:
    from coincidence import count_ranges_parallel, iter_ptu_range, split_ptu

    p = tmp_path_factory.mktemp("ranges") / "r.ptu"
    ev = w.random_events(device, n, seed=seed, span_periods=20.0, n_markers=3)
    w.write_ptu(
        p, device, ev, acquisition_time_ms=10**4 if acq else None, multi_overflow=seed % 2 == 0
    )
    whole = list(iter_ptu(p, chunk_records=97))
    ranges = split_ptu(p, n_ranges)
    assert ranges[0].start == 0 and ranges[-1].stop == read_ptu_header(p).n_records
    parts = [list(iter_ptu_range(r, chunk_records=53)) for r in ranges]
    got = [b for part in parts for b in part]
    ts = np.concatenate([b.timestamps for b in got]) if got else np.empty(0)
    want = np.concatenate([b.timestamps for b in whole]) if whole else np.empty(0)
    assert np.array_equal(ts, want)
    assert sum(b.duration_ps for b in got) == sum(b.duration_ps for b in whole)
    if whole:
        assert got[0].begin_ps == whole[0].begin_ps and got[-1].end_ps == whole[-1].end_ps
        full = TagBatch.concatenate(whole)
        rep = count_ranges_parallel(
            [lambda r=r: iter_ptu_range(r, chunk_records=53) for r in ranges], 5, 50_000,
            workers=2,
        )  # fmt: skip
        assert np.array_equal(rep.coincidences, reference(full, 5, 50_000, [0] * 5)[1])
