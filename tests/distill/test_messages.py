"""Wire format: round trips, and clear refusals of truncated, oversized or foreign bytes."""

import numpy as np
import pytest

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
