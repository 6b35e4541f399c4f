"""Frames: every type round-trips; bad input from the peer gets a named, counted refusal."""

import contextlib
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channel import (
    HEADER_BYTES,
    ChannelError,
    ForeignMessageError,
    MalformedPayloadError,
    OversizedFrameError,
    PairReply,
    Positions,
    ProtocolError,
    TimeBasisEpoch,
    TruncatedFrameError,
    TypedPayload,
    UnknownTypeError,
    VersionError,
    decode_frame,
    encode_frame,
    link_id_of,
    time_basis_epoch,
)
from coincidence import TagBatch

LINK = link_id_of("alice-bob")


def epoch_msg(epoch=3, n=1000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 10**9, n)) // 125 * 125
    return TimeBasisEpoch(epoch, 0, 10**9, 125, t, rng.integers(0, 2, n))


def test_epoch_round_trip():
    m = epoch_msg()
    f = decode_frame(encode_frame(m, LINK, 7), LINK)
    assert (f.seq, f.epoch, f.link_id) == (7, 3, LINK)
    out = f.message
    assert isinstance(out, TimeBasisEpoch)
    assert out.times_ps.tolist() == m.times_ps.tolist()
    assert out.bases.tolist() == m.bases.tolist()
    assert (out.begin_ps, out.end_ps, out.resolution_ps) == (0, 10**9, 125)


def test_reply_and_typed_round_trip():
    r = PairReply(4, 100, np.array([0, 5, 99]), np.array([1, 0, 1]))
    out = decode_frame(encode_frame(r, LINK, 1), LINK).message
    assert isinstance(out, PairReply)
    assert (out.epoch, out.n_events, out.indices.tolist(), out.bases.tolist()) == (
        4,
        100,
        [0, 5, 99],
        [1, 0, 1],
    )
    fields = {
        "parities": np.array([1, 0, 1], np.uint8),
        "syndrome": np.arange(5, dtype=np.uint32),
        "qber": np.array([0.031]),
        "hash": b"\x01\x02\xff",
        "sample-positions": Positions(np.array([3, 10, 11])),
    }
    t = TypedPayload("cascade.pass-1", 9, fields)
    out2 = decode_frame(encode_frame(t, LINK, 2), LINK).message
    assert isinstance(out2, TypedPayload)
    assert (out2.kind, out2.epoch) == ("cascade.pass-1", 9)
    assert out2.fields["hash"] == b"\x01\x02\xff"
    assert out2.fields["syndrome"].tolist() == [0, 1, 2, 3, 4]
    assert out2.fields["qber"].tolist() == [0.031]
    pos = out2.fields["sample-positions"]
    assert isinstance(pos, Positions) and pos.values.tolist() == [3, 10, 11]


def test_encoder_takes_no_outcome():
    """The epoch message has no field for an outcome; bases must be single bits."""
    with pytest.raises(ChannelError, match="0 or 1"):
        TimeBasisEpoch(0, 0, 10, 1, np.array([1, 2]), np.array([0, 3]))  # a detector index
    with pytest.raises(TypeError):
        TimeBasisEpoch(0, 0, 10, 1, np.array([1]), np.array([0]), outcomes=np.array([1]))  # type: ignore[call-arg]


def test_batch_projection_drops_outcomes():
    """H and V (and D and A) tags give identical frames: nothing of the outcome crosses."""
    rng = np.random.default_rng(5)
    t = np.sort(rng.integers(0, 10**10, 5000))
    ch = rng.integers(0, 4, t.size)  # Alice H, V, D, A
    basis = {0: 0, 1: 0, 2: 1, 3: 1}
    swapped = ch ^ 1  # every outcome flipped, same bases
    f1 = encode_frame(time_basis_epoch(1, TagBatch(t, ch, 0, 10**10), basis, 125), LINK, 1)
    f2 = encode_frame(time_basis_epoch(1, TagBatch(t, swapped, 0, 10**10), basis, 125), LINK, 1)
    assert f1 == f2


def _header(mtype=16, version=1, magic=b"QC", flags=0, link=LINK, seq=1, epoch=0, length=0):
    return struct.pack("<2sBBHIQqI", magic, version, mtype, flags, link, seq, epoch, length)


GOOD = encode_frame(epoch_msg(), LINK, 1)


@pytest.mark.parametrize(
    ("frame", "exc", "msg"),
    [
        (b"", TruncatedFrameError, "shorter than the 30-byte header"),
        (GOOD[:20], TruncatedFrameError, "shorter than the 30-byte header"),
        (GOOD[:-1], TruncatedFrameError, "carries"),
        (GOOD + b"x", MalformedPayloadError, "carries"),
        (b"XX" + GOOD[2:], VersionError, "bad magic"),
        (GOOD[:2] + b"\x02" + GOOD[3:], VersionError, "protocol version 2"),
        (_header(mtype=99), UnknownTypeError, "unknown message type 99"),
        (_header(link=LINK ^ 1), ForeignMessageError, "link"),
        (_header(flags=1), MalformedPayloadError, "reserved flags"),
        (_header(seq=0), MalformedPayloadError, "numbered types need seq"),
        (_header(length=2**31), OversizedFrameError, "exceeds the limit"),
        (_header(length=4) + b"\0" * 4, MalformedPayloadError, "field epoch header"),
        (
            _header(length=28) + struct.pack("<qqIII", 0, 10, 1, 2**30, 0),
            OversizedFrameError,
            "count 1073741824",
        ),
        (_header(mtype=2, seq=0, length=8) + b"\0" * 8 + b"z", MalformedPayloadError, "carries"),
    ],
)
def test_bad_frames_refused_with_named_errors(frame, exc, msg):
    with pytest.raises(exc, match=msg):
        decode_frame(frame, LINK)


def test_oversized_frame_refused_before_parsing():
    with pytest.raises(OversizedFrameError, match="exceeds the limit of 1000"):
        decode_frame(GOOD, LINK, max_frame_bytes=1000)
    with pytest.raises(OversizedFrameError):
        encode_frame(epoch_msg(n=10_000), LINK, 1, max_frame_bytes=1000)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_frames_never_raise_anything_but_protocol_errors(data):
    frame = bytearray(GOOD[: data.draw(st.integers(0, len(GOOD)))])
    for _ in range(data.draw(st.integers(0, 4))):
        if frame:
            i = data.draw(st.integers(0, len(frame) - 1))
            frame[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()) and len(frame) >= HEADER_BYTES:
        struct.pack_into("<I", frame, 26, len(frame) - HEADER_BYTES)  # keep length consistent
    with contextlib.suppress(ProtocolError):
        decode_frame(bytes(frame), LINK)


def test_local_values_out_of_range_are_named():
    with pytest.raises(ChannelError, match="does not fit in 64 bits"):
        encode_frame(TypedPayload("x", 2**64), LINK, 1)
    with pytest.raises(ChannelError, match="kind"):
        TypedPayload("Bad Kind", 0)
    with pytest.raises(ChannelError, match="dtype"):
        TypedPayload("x", 0, {"a": np.array(["s"])})


field_values = st.one_of(
    st.binary(max_size=40),
    st.lists(st.integers(0, 255), max_size=30).map(lambda v: np.array(v, np.uint8)),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=30).map(lambda v: np.array(v, np.int64)),
    st.lists(st.floats(allow_nan=False), max_size=30).map(lambda v: np.array(v, np.float64)),
    st.sets(st.integers(0, 2**40), max_size=30).map(
        lambda v: Positions(np.array(sorted(v), np.int64))
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_.-]{0,31}", fullmatch=True), field_values, max_size=8
    ),
    st.integers(-(2**63), 2**63 - 1),
)
def test_typed_payload_round_trip(fields, ep):
    out = decode_frame(encode_frame(TypedPayload("block", ep, fields), LINK, 3), LINK).message
    assert isinstance(out, TypedPayload) and out.epoch == ep and set(out.fields) == set(fields)
    for name, v in fields.items():
        got = out.fields[name]
        if isinstance(v, bytes):
            assert got == v
        elif isinstance(v, Positions):
            assert isinstance(got, Positions) and got.values.tolist() == v.values.tolist()
        else:
            assert isinstance(got, np.ndarray) and got.dtype == v.dtype
            assert got.tolist() == v.tolist()
