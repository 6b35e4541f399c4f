"""Test-only writer of PicoQuant PTU T2 files, per PicoQuant's published format.

Written from the format description (tagged header: 32-byte ident, int32 index,
uint32 type, 8-byte value, variable-length payload for strings/blobs/arrays; then
little-endian uint32 records), independent of ``coincidence._files`` so the two
can check each other. Events are given in device ticks (units of the global
resolution); overflow records are inserted as the wrap-around period demands.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TY_EMPTY8 = 0xFFFF0008
TY_BOOL8 = 0x00000008
TY_INT8 = 0x10000008
TY_BITSET64 = 0x11000008
TY_COLOR8 = 0x12000008
TY_FLOAT8 = 0x20000008
TY_TDATETIME = 0x21000008
TY_FLOAT8ARRAY = 0x2001FFFF
TY_ANSISTRING = 0x4001FFFF
TY_WIDESTRING = 0x4002FFFF
TY_BINARYBLOB = 0xFFFFFFFF

RT_PICOHARP_T2 = 0x00010203
RT_HYDRAHARP_T2 = 0x00010204
RT_HYDRAHARP2_T2 = 0x01010204
RT_MULTIHARP_T2 = 0x00010207
RT_HYDRAHARP2_T3 = 0x01010304

# device -> (record type, resolution in s, overflow period in ticks)
DEVICES = {
    "picoharp": (RT_PICOHARP_T2, 4e-12, 210698240),
    "hydraharp1": (RT_HYDRAHARP_T2, 1e-12, 33552000),
    "hydraharp2": (RT_HYDRAHARP2_T2, 1e-12, 33554432),
    "multiharp": (RT_MULTIHARP_T2, 5e-12, 33554432),
}


@dataclass
class Events:
    """Known events in ticks: photons (channel >= 0), sync (-1) and markers (separate)."""

    ticks: np.ndarray  # int64, photons and sync, sorted
    channels: np.ndarray  # int64, -1 = sync (HydraHarp/MultiHarp only)
    marker_ticks: np.ndarray  # int64
    marker_masks: np.ndarray  # int64 in 1..15


def _tag(ident: str, typ: int, value: bytes, idx: int = -1, payload: bytes = b"") -> bytes:
    name = ident.encode("ascii")
    assert len(name) < 32
    return name.ljust(32, b"\0") + struct.pack("<iI", idx, typ) + value + payload


def header_bytes(
    record_type: int,
    resolution_s: float,
    n_records: int,
    *,
    acquisition_time_ms: int | None = None,
    n_input_channels: int = 4,
    extra_tags: bool = True,
    blob: bool = True,
) -> bytes:
    """The magic, version and a tagged header with the tags a reader needs, ending Header_End."""
    out = [b"PQTTTR\0\0", b"1.0.00\0\0"]
    if extra_tags:
        text = b"qnet test file\0".ljust(16, b"\0")
        out.append(_tag("File_Comment", TY_ANSISTRING, struct.pack("<q", len(text)), 0, text))
        wide = "qnet \u00e9".encode("utf-16-le") + b"\0\0"
        wide = wide.ljust(16, b"\0")
        out.append(_tag("CreatorSW_Name", TY_WIDESTRING, struct.pack("<q", len(wide)), -1, wide))
        out.append(_tag("File_CreatingTime", TY_TDATETIME, struct.pack("<d", 46000.5)))
        out.append(_tag("Measurement_SubMode", TY_INT8, struct.pack("<q", 0)))
        out.append(_tag("TTResult_SyncRate", TY_INT8, struct.pack("<q", 1000000)))
        out.append(_tag("HW_Markers", TY_BITSET64, struct.pack("<q", 15)))
        out.append(_tag("Some_Color", TY_COLOR8, struct.pack("<q", 0xFF00)))
        out.append(_tag("Some_Flag", TY_BOOL8, struct.pack("<q", 1)))
        arr = struct.pack("<3d", 1.0, 2.0, 3.0)
        out.append(_tag("Some_Array", TY_FLOAT8ARRAY, struct.pack("<q", len(arr)), -1, arr))
        if blob:  # tttrlib cannot parse binary blobs (it says so), valid PTU though
            data = bytes(range(24))
            out.append(_tag("Some_Blob", TY_BINARYBLOB, struct.pack("<q", len(data)), -1, data))
        out.append(_tag("Empty_Tag", TY_EMPTY8, b"\0" * 8))
    out.append(_tag("Measurement_Mode", TY_INT8, struct.pack("<q", 2)))
    out.append(_tag("HW_InpChannels", TY_INT8, struct.pack("<q", n_input_channels)))
    out.append(_tag("MeasDesc_Resolution", TY_FLOAT8, struct.pack("<d", resolution_s)))
    out.append(_tag("MeasDesc_GlobalResolution", TY_FLOAT8, struct.pack("<d", resolution_s)))
    if acquisition_time_ms is not None:
        out.append(
            _tag("MeasDesc_AcquisitionTime", TY_INT8, struct.pack("<q", acquisition_time_ms))
        )
    out.append(_tag("TTResultFormat_TTTRRecType", TY_INT8, struct.pack("<q", record_type)))
    out.append(_tag("TTResultFormat_BitsPerRecord", TY_INT8, struct.pack("<q", 32)))
    out.append(_tag("TTResult_NumberOfRecords", TY_INT8, struct.pack("<q", n_records)))
    out.append(_tag("Header_End", TY_EMPTY8, b"\0" * 8))
    return b"".join(out)


def encode_t2(device: str, ev: Events, *, multi_overflow: bool = True) -> np.ndarray:
    """Encode the events as uint32 T2 records of ``device``, with overflow records."""
    _, _, period = DEVICES[device]
    # merge photons/sync (kind 0) and markers (kind 1) in time order; markers after photons
    items: list[tuple[int, int, int]] = [
        (int(t), 0, int(c)) for t, c in zip(ev.ticks, ev.channels, strict=True)
    ]
    items += [(int(t), 1, int(m)) for t, m in zip(ev.marker_ticks, ev.marker_masks, strict=True)]
    items.sort(key=lambda x: (x[0], x[1]))
    recs: list[int] = []
    ofl = 0
    for tick, kind, val in items:
        need = tick // period
        while ofl < need:
            if device == "picoharp":
                recs.append(0xF << 28)
                ofl += 1
            elif device == "hydraharp1" or not multi_overflow:
                recs.append((1 << 31) | (63 << 25) | (1 if device != "hydraharp1" else 0))
                ofl += 1
            else:
                n = min(need - ofl, (1 << 25) - 1)
                recs.append((1 << 31) | (63 << 25) | n)
                ofl += n
        tt = tick - ofl * period
        assert 0 <= tt < period
        if device == "picoharp":
            if kind == 1:
                recs.append((0xF << 28) | (tt & ~0xF) | val)
            else:
                assert 0 <= val < 15
                recs.append((val << 28) | tt)
        else:
            if kind == 1:
                recs.append((1 << 31) | (val << 25) | tt)
            elif val == -1:
                recs.append((1 << 31) | tt)
            else:
                assert 0 <= val < 63
                recs.append((val << 25) | tt)
    return np.asarray(recs, dtype="<u4")


def write_ptu(
    path: str | Path,
    device: str,
    ev: Events,
    *,
    acquisition_time_ms: int | None = None,
    multi_overflow: bool = True,
    n_input_channels: int = 4,
    blob: bool = True,
) -> np.ndarray:
    """Write a PTU T2 file of ``device`` holding ``ev``; returns the records written."""
    rt, res, _ = DEVICES[device]
    recs = encode_t2(device, ev, multi_overflow=multi_overflow)
    with open(path, "wb") as f:
        f.write(
            header_bytes(
                rt,
                res,
                recs.size,
                acquisition_time_ms=acquisition_time_ms,
                n_input_channels=n_input_channels,
                blob=blob,
            )
        )
        f.write(recs.tobytes())
    return recs


def random_events(
    device: str,
    n: int,
    *,
    n_channels: int = 4,
    with_sync: bool = True,
    n_markers: int = 5,
    span_periods: float = 5.0,
    seed: int = 0,
    channels: Sequence[int] | None = None,
) -> Events:
    """Random sorted events spanning several overflow periods (gaps of many periods too)."""
    rng = np.random.default_rng(seed)
    _, _, period = DEVICES[device]
    ticks = np.sort(rng.integers(0, int(span_periods * period), n)).astype(np.int64)
    if n >= 4:  # a long quiet stretch crossing many periods (multi-overflow records)
        ticks[n // 2 :] += 37 * period
    pool = list(channels) if channels is not None else list(range(n_channels))
    if with_sync and device != "picoharp":
        pool.append(-1)
    ch = rng.choice(np.asarray(pool, dtype=np.int64), n)
    mt = np.sort(rng.integers(0, int(ticks[-1]) if n else period, n_markers)).astype(np.int64)
    if device == "picoharp":
        mt &= ~0xF
    mm = rng.integers(1, 16, n_markers).astype(np.int64)
    return Events(ticks, ch, mt, mm)
