"""Wire format: round trips, and clear refusals of truncated, oversized or foreign bytes."""

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distill import (
    EcDone,
    EcStart,
    ParityQuery,
    ParityReply,
    ProtocolError,
    VerifyResult,
    VerifyTag,
    decode,
    encode,
)


def test_round_trips():
    q = ParityQuery(
        1,
        2,
        np.array([0, 1, 5], np.uint8),
        np.array([0, 0, 1], np.uint8),
        np.array([0, 8, 3], np.int64),
        np.array([4, 16, 9], np.int64),
    )
    back = decode(encode(q))
    for f in ("layer", "half", "lo", "hi"):
        np.testing.assert_array_equal(getattr(back, f), getattr(q, f))
    r = decode(encode(ParityReply(1, 2, np.array([1, 0, 1, 1, 0, 0, 0, 0, 1], np.uint8))))
    np.testing.assert_array_equal(r.bits, [1, 0, 1, 1, 0, 0, 0, 0, 1])
    for m in (
        EcStart(1, 4096, 64, 512, 16, 2**63 + 5),
        EcDone(1, 9),
        VerifyTag(1, 2**64 - 1, 3, 4, 5),
        VerifyResult(1, 77, True),
    ):
        assert decode(encode(m)) == m


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "bad magic"),
        (b"XX\x01\x04", "bad magic"),
        (b"QD\x02\x04" + bytes(32), "version 2"),
        (b"QD\x01\x63", "unknown distill message type 99"),
        (encode(EcStart(1, 4096, 64, 512, 16, 1))[:-3], "truncated in parameters"),
        (encode(EcDone(1, 2)) + b"\0", "trailing"),
        (b"QD\x01\x06" + bytes(12) + (2**31).to_bytes(4, "little"), "exceeds the limit"),
        (b"QD\x01\x09" + bytes(16) + b"\x07", "ok must be 0 or 1"),
    ],
)
def test_malformed_bytes_are_refused_with_the_reason(data, words):
    with pytest.raises(ProtocolError, match=words):
        decode(data)


_VALID = [
    encode(EcStart(1, 4096, 64, 256, 16, 5)),
    encode(
        ParityQuery(
            1,
            1,
            np.array([0, 3], np.uint8),
            np.array([0, 1], np.uint8),
            np.array([0, 5], np.int64),
            np.array([4, 900], np.int64),
        )
    ),
    encode(ParityReply(1, 0, np.ones(77, np.uint8))),
    encode(VerifyTag(1, 2, 3, 4, 5)),
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_VALID), st.integers(0, 200), st.integers(0, 255), st.integers(0, 40))
def test_mutated_messages_give_a_message_or_a_protocol_error(data, pos, byte, cut):
    """Any corrupted, truncated or extended input: never another exception."""
    b = bytearray(data)
    b[pos % len(b)] = byte
    for candidate in (bytes(b), bytes(b[: max(0, len(b) - cut)]), bytes(b) + bytes(cut)):
        with contextlib.suppress(ProtocolError):
            decode(candidate)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_a_session_refuses_garbage_with_a_protocol_error(data):
    from distill import AliceFrame, FiniteKeyConfig, FrameInfo

    info = FrameInfo(1, "t", 100, 0.02, FiniteKeyConfig())
    alice = AliceFrame(np.zeros(4096, np.uint8), info)
    try:
        alice.receive(data)
    except ProtocolError:
        assert alice.state == "discarded"
