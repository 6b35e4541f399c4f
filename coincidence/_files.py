"""Tag files: ``.npz`` (read/write) and PicoQuant ``.ptu`` T2 (read), streamed in chunks.

Both readers yield contiguous :class:`TagBatch` chunks, so a file of any size is
processed with bounded memory (a 10 GB PTU file is never loaded whole).

**npz** files hold ``timestamps`` (integer ps) and ``channels`` (small
non-negative integers), optionally ``begin_ps`` and ``end_ps`` (the measured
interval, which must contain every tag: TagFileError otherwise; without them the
file covers ``[first tag, last tag + 1)``). The two arrays are streamed straight
out of the zip members.

**PTU** (PicoQuant unified TTTR): ``PQTTTR`` and two NUL bytes, an 8-byte version, a
tagged header (32-byte ident, int32 index, uint32 type, 8-byte value; strings,
blobs and float arrays carry their length in the value and their bytes after
it) ending with ``Header_End``, then little-endian uint32 records. T2 record
types read here (``TTResultFormat_TTTRRecType``):

- PicoHarp T2 ``0x00010203``: channel 4 bits | timetag 28 bits; channel 15 is
  special: low 4 timetag bits 0 = overflow (period 210698240), else a marker
  bit mask (the marker's time then includes those 4 bits, as PicoQuant says).
- HydraHarp V1 T2 ``0x00010204``: special 1 | channel 6 | timetag 25;
  special channel 63 = one overflow (period 33552000).
- HydraHarp V2 T2 ``0x01010204``, TimeHarp 260N/P T2 ``0x00010205``/``0x01010205``,
  ``0x00010206``/``0x01010206``, MultiHarp T2 ``0x00010207``/``0x01010207``:
  same layout, period 33554432, special channel 63 carries the number of
  overflows in the timetag (0 means 1).
- HydraHarp-like specials: channel 0 = a sync event, 1..15 = marker bit mask.

Time of an event: ``(overflow_accumulator + timetag) * MeasDesc_GlobalResolution``,
returned as integer picoseconds (the resolution must be a whole number of ps,
true of every T2 device). Channel mapping: a detection channel ``c`` (the raw
record field, 0-based) becomes channel ``c``. The HydraHarp/MultiHarp **sync**
input is a real detection event: by default (``sync_channel="auto"``) it becomes
channel ``HW_InpChannels`` from the header (the first number after the detection
channels; 64 if the header lacks it), an integer puts it on that channel (refused
if a detector uses it: below ``HW_InpChannels``, or a detection record on it), and
``"drop"`` skips it. **Markers** (coarse external triggers, possibly slightly out
of time order by design) are not tags: they are skipped by :func:`iter_ptu` and
returned by :func:`read_ptu_markers`.

Chunk boundaries: each batch covers ``[previous end, cut)`` where ``cut`` is the
chunk's last tag time (tags at exactly that time are carried into the next batch
so equal timestamps never straddle a boundary) or, when the chunk ends in
overflow records, the time the overflows prove has passed. More than
``MAX_TAGS_AT_ONE_TIME`` tags at one time are refused (TagFileError): a tagger
records at most one event per channel per time bin (dead time), so such a run
is a corrupt or zero-filled file, and carrying it would cost memory without
bound. The first batch
begins at 0 (the start of the acquisition); the last ends at
``MeasDesc_AcquisitionTime`` (ms) if the header has it and it is later than the
last tag, else at the last tag + 1.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numba
import numpy as np

from ._errors import TagBatchError, TagFileError, TagOrderError
from ._tags import MAX_CHANNELS, TagBatch

#: Records (or tags) decoded per chunk by default: 2 MB of PTU records, 4.5 MB of npz
#: tags. A chunk this size stays in a core's cache through the copy, the order check
#: and the counting passes; 4x larger chunks ran 1.3x slower on one core and scaled
#: worse on two (they share the memory bandwidth), see docs/PERFORMANCE.md.
DEFAULT_CHUNK_RECORDS = 1 << 19

#: Most tags a file may hold at one timestamp. A real tagger gives at most one per
#: channel (256); the margin admits synthetic files, the bound keeps the carried
#: run of equal tags (see Chunk boundaries) within memory.
MAX_TAGS_AT_ONE_TIME = 1 << 20

PTU_MAGIC = b"PQTTTR\0\0"

_TY_EMPTY8 = 0xFFFF0008
_TY_BOOL8 = 0x00000008
_TY_INT8 = 0x10000008
_TY_BITSET64 = 0x11000008
_TY_COLOR8 = 0x12000008
_TY_FLOAT8 = 0x20000008
_TY_TDATETIME = 0x21000008
_TY_FLOAT8ARRAY = 0x2001FFFF
_TY_ANSISTRING = 0x4001FFFF
_TY_WIDESTRING = 0x4002FFFF
_TY_BINARYBLOB = 0xFFFFFFFF
_TAG_HEAD = struct.Struct("<32siI")
_MAX_TAGS = 1_000_000

# record layouts decoded by the kernel
_LAYOUT_PICOHARP = 0
_LAYOUT_HYDRAHARP_V1 = 1
_LAYOUT_HYDRAHARP_V2 = 2

#: T2 record types: code -> (name, layout, overflow period in ticks).
T2_RECORD_TYPES: dict[int, tuple[str, int, int]] = {
    0x00010203: ("PicoHarp T2", _LAYOUT_PICOHARP, 210698240),
    0x00010204: ("HydraHarp V1 T2", _LAYOUT_HYDRAHARP_V1, 33552000),
    0x01010204: ("HydraHarp V2 T2", _LAYOUT_HYDRAHARP_V2, 33554432),
    0x00010205: ("TimeHarp 260N T2", _LAYOUT_HYDRAHARP_V2, 33554432),
    0x01010205: ("TimeHarp 260N T2", _LAYOUT_HYDRAHARP_V2, 33554432),
    0x00010206: ("TimeHarp 260P T2", _LAYOUT_HYDRAHARP_V2, 33554432),
    0x01010206: ("TimeHarp 260P T2", _LAYOUT_HYDRAHARP_V2, 33554432),
    0x00010207: ("MultiHarp T2", _LAYOUT_HYDRAHARP_V2, 33554432),
    0x01010207: ("MultiHarp T2", _LAYOUT_HYDRAHARP_V2, 33554432),
}
#: T3 record types (recognised only to say they are not supported).
T3_RECORD_TYPES: dict[int, str] = {
    0x00010303: "PicoHarp T3",
    0x00010304: "HydraHarp V1 T3",
    0x01010304: "HydraHarp V2 T3",
    0x00010305: "TimeHarp 260N T3",
    0x01010305: "TimeHarp 260N T3",
    0x00010306: "TimeHarp 260P T3",
    0x01010306: "TimeHarp 260P T3",
    0x00010307: "MultiHarp T3",
    0x01010307: "MultiHarp T3",
}
_SUPPORTED = ", ".join(
    sorted({f"{name} (0x{code:08X})" for code, (name, _, _) in T2_RECORD_TYPES.items()})
)

ProgressCallback = Callable[[int, int], None]
"""``progress(records_done, records_total)``, called after each chunk."""

Locator = Callable[[int], str]
"""``locate(k)``: where the ``k``-th tag of the chunk being read is in the file, for errors."""

#: Channels a PTU file's photon records can name, by layout (PicoHarp: 15 is special).
_LAYOUT_CHANNELS = {_LAYOUT_PICOHARP: 15, _LAYOUT_HYDRAHARP_V1: 64, _LAYOUT_HYDRAHARP_V2: 64}


# ----------------------------------------------------------------------------- PTU header


@dataclass(frozen=True)
class PtuHeader:
    """The parsed header of a PTU file and what the reader needs from it.

    Attributes:
        path: the file.
        version: the format version string after the magic.
        tags: every tag, keyed ``Name`` (index -1) or ``Name(i)``; strings decoded,
            blobs and float arrays as ``bytes`` / float64 arrays, dates as float days.
        record_type: ``TTResultFormat_TTTRRecType``.
        record_type_name: e.g. ``"HydraHarp V2 T2"``.
        resolution_ps: ``MeasDesc_GlobalResolution`` in whole picoseconds.
        overflow_period: timetag wrap-around period in ticks.
        n_records: ``TTResult_NumberOfRecords``.
        data_offset: byte offset of the first record.
        acquisition_time_ps: ``MeasDesc_AcquisitionTime`` (ms) in ps, or None.
        n_input_channels: ``HW_InpChannels``, or None.
    """

    path: str
    version: str
    tags: dict[str, Any] = field(repr=False)
    record_type: int
    record_type_name: str
    resolution_ps: int
    overflow_period: int
    n_records: int
    data_offset: int
    acquisition_time_ps: int | None
    n_input_channels: int | None

    @property
    def layout(self) -> int:
        """Record layout code used by the decoding kernel."""
        return T2_RECORD_TYPES[self.record_type][1]


def _read_exact(f: Any, n: int, path: str, what: str) -> bytes:
    """Read exactly ``n`` bytes or raise a TagFileError saying the file is truncated."""
    pos = f.tell()
    data = f.read(n)
    if len(data) != n:
        raise TagFileError(
            f"{path}: truncated PTU header: {what} at byte offset {pos} needs {n} bytes, "
            f"the file ends after {len(data)}"
        )
    return data


def _tag_value(f: Any, typ: int, raw: bytes, path: str, name: str, file_size: int) -> Any:
    """Decode one tag's value (reading its trailing payload for variable-length types)."""
    if typ == _TY_EMPTY8:
        return None
    if typ == _TY_BOOL8:
        return struct.unpack("<q", raw)[0] != 0
    if typ in (_TY_INT8, _TY_BITSET64, _TY_COLOR8):
        return struct.unpack("<q", raw)[0]
    if typ in (_TY_FLOAT8, _TY_TDATETIME):
        return struct.unpack("<d", raw)[0]
    if typ in (_TY_FLOAT8ARRAY, _TY_ANSISTRING, _TY_WIDESTRING, _TY_BINARYBLOB):
        n = struct.unpack("<q", raw)[0]
        pos = f.tell()
        if n < 0 or pos + n > file_size:
            raise TagFileError(
                f"{path}: truncated PTU header: tag {name!r} at byte offset {pos - 48} "
                f"announces {n} payload bytes but the file has {file_size - pos} left"
            )
        payload = _read_exact(f, n, path, f"payload of tag {name!r}")
        if typ == _TY_ANSISTRING:
            return payload.split(b"\0", 1)[0].decode("latin-1")
        if typ == _TY_WIDESTRING:
            return payload.decode("utf-16-le", errors="replace").split("\0", 1)[0]
        if typ == _TY_FLOAT8ARRAY:
            return np.frombuffer(payload[: n - n % 8], dtype="<f8").copy()
        return payload
    raise TagFileError(
        f"{path}: corrupt PTU header: tag {name!r} at byte offset {f.tell() - 48} has "
        f"unknown type 0x{typ:08X}"
    )


def read_ptu_header(path: str | os.PathLike[str]) -> PtuHeader:
    """Parse a PTU file's header; raise TagFileError if it is foreign, truncated or not T2."""
    p = str(path)
    try:
        file_size = os.path.getsize(p)
        f = open(p, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise TagFileError(f"{p}: cannot open: {e.strerror or e}") from e
    with f:
        magic = f.read(8)
        if magic != PTU_MAGIC:
            if len(magic) < 8 and PTU_MAGIC.startswith(magic) and magic:
                raise TagFileError(f"{p}: truncated PTU file: it ends inside the magic")
            raise TagFileError(
                f"{p}: not a PicoQuant PTU file (byte offset 0: expected magic 'PQTTTR', "
                f"found {magic[:8]!r})"
            )
        version = _read_exact(f, 8, p, "version").split(b"\0", 1)[0].decode("latin-1")
        tags: dict[str, Any] = {}
        for _ in range(_MAX_TAGS):
            head = _read_exact(f, 48, p, "tag")
            ident_b, idx, typ = _TAG_HEAD.unpack(head[:40])
            ident = ident_b.split(b"\0", 1)[0].decode("latin-1")
            key = ident if idx < 0 else f"{ident}({idx})"
            tags[key] = _tag_value(f, typ, head[40:], p, key, file_size)
            if ident == "Header_End":
                break
        else:
            raise TagFileError(f"{p}: corrupt PTU header: no Header_End in {_MAX_TAGS} tags")
        data_offset = f.tell()

    def need(name: str) -> Any:
        if name not in tags:
            raise TagFileError(f"{p}: PTU header lacks the mandatory tag {name!r}")
        return tags[name]

    rt = int(need("TTResultFormat_TTTRRecType"))
    if rt in T3_RECORD_TYPES:
        raise TagFileError(
            f"{p}: {T3_RECORD_TYPES[rt]} (record type 0x{rt:08X}) is a T3 file; qnet reads "
            f"T2 files only: {_SUPPORTED}"
        )
    if rt not in T2_RECORD_TYPES:
        raise TagFileError(f"{p}: unsupported PTU record type 0x{rt:08X}; supported: {_SUPPORTED}")
    name, _, period = T2_RECORD_TYPES[rt]
    res_s = float(need("MeasDesc_GlobalResolution"))
    res_ps = round(res_s * 1e12)
    if not (res_ps >= 1 and math.isclose(res_ps, res_s * 1e12, rel_tol=1e-6)):
        raise TagFileError(
            f"{p}: MeasDesc_GlobalResolution {res_s!r} s is not a whole number of "
            f"picoseconds; cannot convert timetags to integer ps"
        )
    n_records = int(need("TTResult_NumberOfRecords"))
    if n_records < 0:
        raise TagFileError(f"{p}: TTResult_NumberOfRecords is negative ({n_records})")
    acq = tags.get("MeasDesc_AcquisitionTime")
    acq_ps = round(float(acq) * 1e9) if isinstance(acq, int | float) and acq > 0 else None
    n_in = tags.get("HW_InpChannels")
    return PtuHeader(
        path=p,
        version=version,
        tags=tags,
        record_type=rt,
        record_type_name=name,
        resolution_ps=res_ps,
        overflow_period=period,
        n_records=n_records,
        data_offset=data_offset,
        acquisition_time_ps=acq_ps,
        n_input_channels=int(n_in) if isinstance(n_in, int) and n_in > 0 else None,
    )


# ----------------------------------------------------------------------------- PTU records


@numba.njit(cache=True, nogil=True)
def _decode_t2(
    records: np.ndarray,
    layout: int,
    period: int,
    ofl_ticks: int,
    res_ps: int,
    sync_channel: int,
    out_t: np.ndarray,
    out_c: np.ndarray,
    mk_t: np.ndarray,
    mk_m: np.ndarray,
    state: np.ndarray,
) -> int:
    """Decode T2 records into photon tags (ps, channel) and markers (ps, bit mask).

    ``out_*``/``mk_*`` must be at least ``records.size`` long (not checked: the caller
    allocates them). ``state`` (int64[4]) receives: photons written, markers written,
    overflow accumulator (ticks) at the end, overflow records seen. Returns -1, or the
    index of the first record that is not valid for the layout or is a HydraHarp-family
    detection on ``sync_channel`` (decoding stops there). ``sync_channel < 0`` drops syncs.
    """
    n = records.shape[0]
    n_ph = 0
    n_mk = 0
    n_ofl = 0
    ofl = ofl_ticks
    bad = -1
    for i in range(n):
        r = np.int64(records[i])
        if layout == 0:
            ch = (r >> 28) & 0xF
            tt = r & 0x0FFFFFFF
            if ch == 0xF:
                m = tt & 0xF
                if m == 0:
                    ofl += period
                    n_ofl += 1
                else:
                    mk_t[n_mk] = (ofl + tt) * res_ps
                    mk_m[n_mk] = m
                    n_mk += 1
            else:
                out_t[n_ph] = (ofl + tt) * res_ps
                out_c[n_ph] = ch
                n_ph += 1
        else:
            special = (r >> 31) & 1
            ch = (r >> 25) & 0x3F
            tt = r & 0x1FFFFFF
            if special == 0:
                if ch == sync_channel:  # the sync would merge into this detector
                    bad = i
                    break
                out_t[n_ph] = (ofl + tt) * res_ps
                out_c[n_ph] = ch
                n_ph += 1
            elif ch == 0x3F:
                if layout == 1 or tt == 0:
                    ofl += period
                else:
                    ofl += period * tt
                n_ofl += 1
            elif ch == 0:
                if sync_channel >= 0:
                    out_t[n_ph] = (ofl + tt) * res_ps
                    out_c[n_ph] = sync_channel
                    n_ph += 1
            elif ch <= 15:
                mk_t[n_mk] = (ofl + tt) * res_ps
                mk_m[n_mk] = ch
                n_mk += 1
            else:
                bad = i
                break
    state[0] = n_ph
    state[1] = n_mk
    state[2] = ofl
    state[3] = n_ofl
    return bad


def _resolve_sync_channel(header: PtuHeader, sync_channel: int | str) -> int:
    """The output channel of HydraHarp-style sync records (-1 = drop them).

    A channel below ``HW_InpChannels`` is refused: the syncs would merge into that
    detector. (Without the tag, the decoder refuses a detection on the sync channel.)
    """
    if sync_channel == "drop":
        return -1
    if sync_channel == "auto":
        return header.n_input_channels if header.n_input_channels is not None else 64
    if isinstance(sync_channel, int) and not isinstance(sync_channel, bool):
        if not 0 <= sync_channel < MAX_CHANNELS:
            raise TagFileError(f"sync_channel {sync_channel} is outside 0..{MAX_CHANNELS - 1}")
        n_in = header.n_input_channels
        if header.layout != _LAYOUT_PICOHARP and n_in is not None and sync_channel < n_in:
            raise TagFileError(
                f"{header.path}: sync_channel {sync_channel} is one of the file's {n_in} "
                f"detection channels (0..{n_in - 1}, HW_InpChannels): the sync events would "
                f"merge into that detector; use a channel >= {n_in}, 'auto' or 'drop'"
            )
        return sync_channel
    raise TagFileError(f"sync_channel must be an int, 'auto' or 'drop', got {sync_channel!r}")


def _check_ptu_size(h: PtuHeader) -> None:
    """Raise TagFileError if the record section is shorter than the header announces."""
    size = os.path.getsize(h.path)
    have = size - h.data_offset
    if have < 4 * h.n_records:
        raise TagFileError(
            f"{h.path}: truncated PTU record section: the header announces {h.n_records} "
            f"records ({4 * h.n_records} bytes from byte offset {h.data_offset}) but the "
            f"file holds {have} bytes ({have // 4} whole records)"
        )


def _photon_records(records: np.ndarray, layout: int, sync_ch: int) -> np.ndarray:
    """Indices of the records that :func:`_decode_t2` turns into tags (for error positions)."""
    r = records.astype(np.int64)
    if layout == _LAYOUT_PICOHARP:
        return np.flatnonzero(((r >> 28) & 0xF) != 0xF)
    special = (r >> 31) & 1
    is_sync = (special == 1) & (((r >> 25) & 0x3F) == 0)
    return np.flatnonzero((special == 0) | (is_sync & (sync_ch >= 0)))


@dataclass(frozen=True)
class _PtuChunk:
    """One decoded chunk of records (see :func:`_iter_ptu_raw`)."""

    timestamps: np.ndarray
    channels: np.ndarray
    marker_ps: np.ndarray
    marker_masks: np.ndarray
    known_ps: int
    """Every later tag is at or after this time (the overflows seen so far)."""
    first_record: int
    records: np.ndarray

    def locator(self, h: PtuHeader, sync_ch: int) -> Locator:
        """Name the record (index and byte offset) behind this chunk's k-th tag."""

        def locate(k: int) -> str:
            if k < 0:
                return f"a tag carried over from the records before record {self.first_record}"
            rec = self.first_record + int(_photon_records(self.records, h.layout, sync_ch)[k])
            return f"record {rec} (byte offset {h.data_offset + 4 * rec})"

        return locate


def _iter_ptu_raw(
    h: PtuHeader,
    chunk_records: int,
    sync_ch: int,
    progress: ProgressCallback | None,
    part: PtuRange | None = None,
) -> Iterator[_PtuChunk]:
    """Decode the records chunk by chunk (``part``: only records ``start .. stop - 1``)."""
    state = np.zeros(4, np.int64)
    ofl = 0 if part is None else part.overflow_ticks
    done = 0 if part is None else part.start
    stop = h.n_records if part is None else part.stop
    with open(h.path, "rb") as f:
        f.seek(h.data_offset + 4 * done)
        while done < stop:
            n = min(chunk_records, stop - done)
            offset = h.data_offset + 4 * done
            recs = np.fromfile(f, dtype="<u4", count=n)
            if recs.size != n:
                raise TagFileError(
                    f"{h.path}: truncated PTU record section at byte offset "
                    f"{offset + 4 * recs.size}: expected {n - recs.size} more records"
                )
            out_t = np.empty(n, np.int64)
            out_c = np.empty(n, np.uint8)
            mk_t = np.empty(n, np.int64)
            mk_m = np.empty(n, np.uint8)
            bad = int(
                _decode_t2(
                    recs, h.layout, h.overflow_period, ofl, h.resolution_ps, sync_ch,
                    out_t, out_c, mk_t, mk_m, state,
                )
            )  # fmt: skip
            if bad >= 0:
                rec = int(recs[bad])
                where = f"record {done + bad} (byte offset {offset + 4 * bad})"
                if rec >> 31 == 0:
                    raise TagFileError(
                        f"{h.path}: {where} is a detection on channel {(rec >> 25) & 0x3F}, "
                        f"which sync_channel {sync_ch} also names: the sync events would merge "
                        f"into that detector; use a channel no detector uses, or 'drop'"
                    )
                raise TagFileError(
                    f"{h.path}: corrupt {h.record_type_name} {where}: 0x{rec:08X} is a "
                    f"special record with undefined channel code {(rec >> 25) & 0x3F}"
                )
            ofl = int(state[2])
            yield _PtuChunk(
                out_t[: state[0]],
                out_c[: state[0]],
                mk_t[: state[1]],
                mk_m[: state[1]],
                ofl * h.resolution_ps,
                done,
                recs,
            )
            done += n
            if progress is not None:
                progress(done, stop)


@dataclass(frozen=True)
class PtuRange:
    """Records ``start .. stop - 1`` of a PTU file, covering ``[begin_ps, end_ps)``.

    ``overflow_ticks``: the overflow time accumulated before ``start``; ``end_ps``
    None for the last range (it ends as the whole file does).
    """

    path: str
    sync_channel: int | str
    start: int
    stop: int
    overflow_ticks: int
    begin_ps: int
    end_ps: int | None


@numba.njit(cache=True, nogil=True)
def _overflow_cuts(
    records: np.ndarray, layout: int, period: int, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each target index, the record after the first overflow at or after it.

    Returns (cut index, overflow ticks accumulated up to the cut); -1 where no overflow
    follows. Every record before a cut is earlier than every record after it (an
    overflow closes its period), so cutting there splits the file in time. Scans the
    records once, up to the last cut.
    """
    m = targets.shape[0]
    cuts = np.full(m, -1, np.int64)
    ofls = np.zeros(m, np.int64)
    ofl = 0
    k = 0
    for i in range(records.shape[0]):
        if k >= m:
            break
        r = np.int64(records[i])
        step = 0
        if layout == 0:
            if (r >> 28) & 0xF == 0xF and r & 0xF == 0:
                step = period
        elif (r >> 31) & 1 == 1 and (r >> 25) & 0x3F == 0x3F:
            tt = r & 0x1FFFFFF
            step = period if (layout == 1 or tt == 0) else period * tt
        if step:
            ofl += step
            while k < m and targets[k] <= i:
                cuts[k] = i + 1
                ofls[k] = ofl
                k += 1
    return cuts, ofls


def split_ptu(
    path: str | os.PathLike[str], n_ranges: int, *, sync_channel: int | str = "auto"
) -> list[PtuRange]:
    """Cut a PTU T2 file into up to ``n_ranges`` consecutive time ranges of similar size.

    Cuts fall just after overflow records (found in one light scan of the records,
    memory-mapped), so every tag of a range is earlier than every tag of the next.
    Each range is decoded by :func:`iter_ptu_range`; together they give the tags and
    the measured time of :func:`iter_ptu`. A file without overflows stays one range.
    """
    h = read_ptu_header(path)
    _resolve_sync_channel(h, sync_channel)
    _check_ptu_size(h)
    if n_ranges < 1:
        raise TagFileError(f"n_ranges must be >= 1, got {n_ranges}")
    n = h.n_records
    starts, ofls, begins = [0], [0], [0]
    if n_ranges > 1 and n > 0:
        recs = np.memmap(h.path, dtype="<u4", mode="r", offset=h.data_offset, shape=(n,))
        targets = np.array([k * n // n_ranges for k in range(1, n_ranges)], np.int64)
        cuts, o = _overflow_cuts(recs, h.layout, h.overflow_period, targets)
        del recs
        for c, t in zip(cuts.tolist(), o.tolist(), strict=True):
            if starts[-1] < c < n:
                starts.append(c)
                ofls.append(t)
                begins.append(t * h.resolution_ps)
    ends: list[int | None] = [*begins[1:], None]
    stops = [*starts[1:], n]
    return [
        PtuRange(h.path, sync_channel, starts[k], stops[k], ofls[k], begins[k], ends[k])
        for k in range(len(starts))
    ]


def iter_ptu_range(
    r: PtuRange,
    *,
    chunk_records: int = DEFAULT_CHUNK_RECORDS,
    progress: ProgressCallback | None = None,
) -> Iterator[TagBatch]:
    """Stream one range of :func:`split_ptu` as contiguous TagBatches."""
    h = read_ptu_header(r.path)
    sync_ch = _resolve_sync_channel(h, r.sync_channel)
    if chunk_records < 1:
        raise TagFileError(f"chunk_records must be >= 1, got {chunk_records}")
    return _ptu_batches(h, chunk_records, sync_ch, progress, r)


class _Chunker:
    """Turn successive sorted tag chunks into contiguous TagBatches (see module doc)."""

    def __init__(self, path: str, begin_ps: int) -> None:
        self.path = path
        self.prev_end = begin_ps
        self.carry_t = np.empty(0, np.int64)
        self.carry_c = np.empty(0, np.uint8)

    def _refuse(self, ts: np.ndarray, ch: np.ndarray, n_carry: int, locate: Locator) -> NoReturn:
        """Validate the whole chunk (carry included) and raise a TagFileError saying where."""
        try:
            TagBatch(ts, ch, self.prev_end, max(int(ts[-1]) + 1, self.prev_end))
        except TagOrderError as e:
            i = e.index
            raise TagFileError(
                f"{self.path}: bad tags: timestamps decrease at {locate(i - n_carry)}: "
                f"{int(ts[i - 1])} ps then {int(ts[i])} ps (the file is not sorted by time)"
            ) from e
        except TagBatchError as e:
            raise TagFileError(f"{self.path}: bad tags near {locate(0)}: {e}") from e
        raise TagFileError(f"{self.path}: bad tags near {locate(0)}")  # not reached

    def push(
        self, ts: np.ndarray, ch: np.ndarray, known_ps: int, locate: Locator
    ) -> TagBatch | None:
        """Add a chunk; ``known_ps``: every later tag is at or after this time.

        The tags at the chunk's last time are carried into the next batch; the rest is
        emitted and validated once (TagBatch). The carry is checked to hold one time only.
        """
        n_carry = self.carry_t.size
        if n_carry:
            ts = np.concatenate([self.carry_t, ts])
            ch = np.concatenate([self.carry_c, ch])
        if ts.size == 0 or known_ps > int(ts[-1]):
            end = max(self.prev_end, known_ps)
            if ts.size == 0 and end == self.prev_end:
                return None
            try:
                batch = TagBatch(ts, ch, self.prev_end, end)
            except TagBatchError:
                self._refuse(ts, ch, n_carry, locate)
            self.carry_t = np.empty(0, np.int64)
            self.carry_c = np.empty(0, np.uint8)
        else:
            last = int(ts[-1])
            k = int(np.searchsorted(ts, last, side="left"))
            # sorted <=> ts[:k] sorted and < last (TagBatch checks), ts[k:] all == last
            if last < self.prev_end or not bool(np.all(ts[k:] == last)):
                self._refuse(ts, ch, n_carry, locate)
            if ts.size - k > MAX_TAGS_AT_ONE_TIME:
                raise TagFileError(
                    f"{self.path}: {ts.size - k} tags at the same time {last} ps, up to "
                    f"{locate(ts.size - 1 - n_carry)}: more than {MAX_TAGS_AT_ONE_TIME} "
                    "events at one time is no measurement (a tagger records at most one per "
                    "channel); the file is corrupt or zero-filled"
                )
            self.carry_t, self.carry_c = ts[k:], ch[k:]
            if last == self.prev_end:
                return None  # k == 0 here: every tag is at the carried time
            try:
                batch = TagBatch(ts[:k], ch[:k], self.prev_end, last)
            except TagBatchError:
                self._refuse(ts, ch, n_carry, locate)
        self.prev_end = batch.end_ps
        return batch

    @property
    def last_tag_ps(self) -> int | None:
        """Time of the last tag pushed and not yet emitted (None if none is carried)."""
        return int(self.carry_t[-1]) if self.carry_t.size else None

    def finish(self, end_hint_ps: int | None) -> TagBatch | None:
        """The last batch: carried tags, ending at the hint if it is late enough."""
        end = self.prev_end
        if self.carry_t.size:
            end = max(end, int(self.carry_t[-1]) + 1)
        if end_hint_ps is not None:
            end = max(end, end_hint_ps)
        if end == self.prev_end and not self.carry_t.size:
            return None
        batch = TagBatch(self.carry_t, self.carry_c, self.prev_end, end)
        self.prev_end = end
        self.carry_t = np.empty(0, np.int64)
        self.carry_c = np.empty(0, np.uint8)
        return batch


def iter_ptu(
    path: str | os.PathLike[str],
    *,
    chunk_records: int = DEFAULT_CHUNK_RECORDS,
    sync_channel: int | str = "auto",
    progress: ProgressCallback | None = None,
) -> Iterator[TagBatch]:
    """Stream a PTU T2 file as contiguous TagBatches of at most ~``chunk_records`` tags.

    ``sync_channel``: ``"auto"`` (HW_InpChannels), an int channel at or above
    HW_InpChannels, or ``"drop"``. Markers are skipped (see :func:`read_ptu_markers`).
    ``progress(done, total)`` is called with records decoded so far after each chunk.
    The header, the file size and the options are checked at once (TagFileError
    before the first batch).
    """
    h = read_ptu_header(path)
    sync_ch = _resolve_sync_channel(h, sync_channel)
    _check_ptu_size(h)
    if chunk_records < 1:
        raise TagFileError(f"chunk_records must be >= 1, got {chunk_records}")
    return _ptu_batches(h, chunk_records, sync_ch, progress)


def _ptu_batches(
    h: PtuHeader,
    chunk_records: int,
    sync_ch: int,
    progress: ProgressCallback | None,
    part: PtuRange | None = None,
) -> Iterator[TagBatch]:
    """The generator behind :func:`iter_ptu` (``part``: one range of it)."""
    chunker = _Chunker(h.path, 0 if part is None else part.begin_ps)
    for c in _iter_ptu_raw(h, chunk_records, sync_ch, progress, part):
        b = chunker.push(c.timestamps, c.channels, c.known_ps, c.locator(h, sync_ch))
        if b is not None:
            yield b
    end = h.acquisition_time_ps if part is None or part.end_ps is None else part.end_ps
    if part is not None and part.end_ps is not None:
        last_ps = chunker.last_tag_ps
        if last_ps is not None and last_ps >= part.end_ps:
            raise TagFileError(
                f"{h.path}: a tag at {last_ps} ps before record {part.stop} is not earlier "
                f"than the overflow-proven time {part.end_ps} ps (corrupt records?)"
            )
    last = chunker.finish(end)
    if last is not None:
        yield last


def read_ptu(path: str | os.PathLike[str], *, sync_channel: int | str = "auto") -> TagBatch:
    """Read a whole PTU T2 file into one TagBatch (small files; else use :func:`iter_ptu`)."""
    batches = list(iter_ptu(path, sync_channel=sync_channel))
    if not batches:
        return TagBatch.empty(0, 0)
    return TagBatch.concatenate(batches)


def read_ptu_markers(
    path: str | os.PathLike[str], *, chunk_records: int = DEFAULT_CHUNK_RECORDS
) -> tuple[np.ndarray, np.ndarray]:
    """All marker records of a PTU T2 file: (times in ps, int64; marker bit masks, uint8).

    Markers have coarser timing than photons and may be slightly out of order (by
    design of the hardware); they are returned in file order.
    """
    h = read_ptu_header(path)
    ts: list[np.ndarray] = []
    ms: list[np.ndarray] = []
    for c in _iter_ptu_raw(h, chunk_records, -1, None):
        ts.append(c.marker_ps)
        ms.append(c.marker_masks)
    if not ts:
        return np.empty(0, np.int64), np.empty(0, np.uint8)
    return np.concatenate(ts), np.concatenate(ms)


# ----------------------------------------------------------------------------- npz


#: Largest metadata JSON accepted in an npz file (bytes): settings, not data.
MAX_METADATA_BYTES = 1 << 20


def write_npz(
    path: str | os.PathLike[str],
    batch: TagBatch,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write a batch as ``.npz`` with ``timestamps``, ``channels``, ``begin_ps``, ``end_ps``.

    ``metadata``: JSON-serialisable settings the file should carry so it analyses
    without retyping them (e.g. ``roles``, ``delays_ps``, ``window_ps``), stored as
    the UTF-8 JSON array ``metadata`` (read back with :func:`read_npz_metadata`).
    """
    extra: dict[str, np.ndarray] = {}
    if metadata is not None:
        try:
            text = json.dumps(dict(metadata), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TagFileError(f"{path}: metadata is not JSON-serialisable: {e}") from e
        extra["metadata"] = np.frombuffer(text.encode("utf-8"), np.uint8)
    with open(path, "wb") as f:
        np.savez(
            f,
            timestamps=batch.timestamps,
            channels=batch.channels,
            begin_ps=np.int64(batch.begin_ps),
            end_ps=np.int64(batch.end_ps),
            **extra,
        )


def read_npz_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata mapping :func:`write_npz` stored, ``{}`` if the file has none."""
    p = str(path)
    with _open_npz(p) as zf:
        if "metadata.npy" not in zf.namelist():
            return {}
        if zf.getinfo("metadata.npy").file_size > MAX_METADATA_BYTES + 256:
            raise TagFileError(f"{p}: metadata larger than {MAX_METADATA_BYTES} bytes")
        try:
            with zf.open("metadata.npy") as f:
                raw = np.lib.format.read_array(f, allow_pickle=False)
            data = json.loads(np.asarray(raw, np.uint8).tobytes().decode("utf-8"))
        except (ValueError, UnicodeDecodeError, zipfile.BadZipFile) as e:
            raise TagFileError(f"{p}: unreadable metadata: {e}") from e
    if not isinstance(data, dict):
        raise TagFileError(f"{p}: metadata must be a JSON object, got {type(data).__name__}")
    return data


class _NpyMember:
    """One ``.npy`` array inside an npz, read in chunks without loading it whole."""

    def __init__(self, zf: zipfile.ZipFile, name: str, path: str) -> None:
        self.fp = zf.open(name)
        try:
            version = np.lib.format.read_magic(self.fp)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(self.fp)
            else:
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(self.fp)
        except ValueError as e:
            raise TagFileError(f"{path}: array {name!r} is not a valid .npy member: {e}") from e
        key = name.removesuffix(".npy")
        if len(shape) != 1 or dtype.kind not in "iu" or dtype.hasobject:
            raise TagFileError(
                f"{path}: array {key!r} must be a 1-D integer array, got shape {shape} "
                f"dtype {dtype}"
            )
        self.n = int(shape[0])
        self.dtype = dtype
        self.name = key
        self.path = path

    def read(self, count: int) -> np.ndarray:
        nbytes = count * self.dtype.itemsize
        data = self.fp.read(nbytes)
        if len(data) != nbytes:
            raise TagFileError(
                f"{self.path}: truncated npz: array {self.name!r} ends early "
                f"({len(data)} of {nbytes} bytes of the next chunk)"
            )
        return np.frombuffer(data, dtype=self.dtype)


def _stored_member(path: str, zf: zipfile.ZipFile, name: str) -> np.ndarray | None:
    """A read-only memory map of an uncompressed npz member, or None if it is compressed."""
    info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise TagFileError(f"{path}: corrupt zip entry {name!r}")
        n_name, n_extra = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + n_name + n_extra)
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
        except ValueError as e:
            raise TagFileError(f"{path}: array {name!r} is not a valid .npy member: {e}") from e
        offset = f.tell()
    if len(shape) != 1 or dtype.kind not in "iu":
        raise TagFileError(f"{path}: array {name!r} must be a 1-D integer array")
    if shape[0] == 0:
        return np.empty(0, dtype)
    if offset + shape[0] * dtype.itemsize > os.path.getsize(path):
        raise TagFileError(f"{path}: truncated npz: array {name!r} ends early")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(int(shape[0]),))


def _open_npz(path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError as e:
        raise TagFileError(f"{path}: no such file") from e
    except OSError as e:
        raise TagFileError(f"{path}: cannot open: {e.strerror or e}") from e
    except zipfile.BadZipFile as e:
        raise TagFileError(f"{path}: not an npz file (not a zip archive: {e})") from e


def _npz_scalar(zf: zipfile.ZipFile, name: str, path: str) -> int | None:
    if f"{name}.npy" not in zf.namelist():
        return None
    with zf.open(f"{name}.npy") as fp:
        try:
            arr = np.lib.format.read_array(fp, allow_pickle=False)
        except ValueError as e:
            raise TagFileError(f"{path}: {name!r} is not a valid array: {e}") from e
    if arr.size != 1 or arr.dtype.kind not in "iu":
        raise TagFileError(f"{path}: {name!r} must be one integer, got {arr!r}")
    return int(arr.reshape(()))


def _npz_members(path: str) -> tuple[zipfile.ZipFile, _NpyMember, _NpyMember]:
    zf = _open_npz(path)
    names = zf.namelist()
    for key in ("timestamps", "channels"):
        if f"{key}.npy" not in names:
            zf.close()
            have = ", ".join(sorted(n.removesuffix(".npy") for n in names)) or "none"
            raise TagFileError(f"{path}: npz file has no {key!r} array (arrays: {have})")
    try:
        ts = _NpyMember(zf, "timestamps.npy", path)
        ch = _NpyMember(zf, "channels.npy", path)
    except BaseException:
        zf.close()
        raise
    if ts.n != ch.n:
        zf.close()
        raise TagFileError(f"{path}: 'timestamps' has {ts.n} entries but 'channels' has {ch.n}")
    return zf, ts, ch


def iter_npz(
    path: str | os.PathLike[str],
    *,
    chunk_records: int = DEFAULT_CHUNK_RECORDS,
    progress: ProgressCallback | None = None,
) -> Iterator[TagBatch]:
    """Stream an npz tag file as contiguous TagBatches of at most ~``chunk_records`` tags.

    The archive and its arrays are checked at once (TagFileError before the first batch).
    """
    p = str(path)
    if chunk_records < 1:
        raise TagFileError(f"chunk_records must be >= 1, got {chunk_records}")
    zf, _, _ = _npz_members(p)
    zf.close()
    return _npz_batches(p, chunk_records, progress)


def _npz_locator(start: int) -> Locator:
    """Name the tag index (in file order) of a chunk's k-th tag; the chunk begins at ``start``."""
    return lambda k: f"tag index {start + k}"


@dataclass(frozen=True)
class NpzRange:
    """Tags ``start .. stop - 1`` of an npz file, covering ``[begin_ps, end_ps)``.

    ``begin_ps`` None: the whole file, read in one pass (its own interval).
    """

    path: str
    start: int
    stop: int
    begin_ps: int | None
    end_ps: int | None


def split_npz(path: str | os.PathLike[str], n_ranges: int) -> list[NpzRange]:
    """Cut an npz tag file into up to ``n_ranges`` consecutive time ranges of similar size.

    Cuts fall at tag times (all tags of one time stay in one range), found by binary
    search in the memory-mapped file, so only a few pages are read. Each range is read
    with :func:`iter_npz_range`; together they cover the file's interval exactly. A
    compressed npz cannot be mapped: one range, the whole file, comes back.
    """
    p = str(path)
    if n_ranges < 1:
        raise TagFileError(f"n_ranges must be >= 1, got {n_ranges}")
    zf, tsm, _ = _npz_members(p)
    with zf:
        begin = _npz_scalar(zf, "begin_ps", p)
        end = _npz_scalar(zf, "end_ps", p)
        ts = _stored_member(p, zf, "timestamps.npy")
        ch = _stored_member(p, zf, "channels.npy")
        n = tsm.n
    if ts is None or ch is None:  # compressed: read in one pass
        return [NpzRange(p, 0, n, None, None)]
    if n == 0:
        b = begin if begin is not None else 0
        return [NpzRange(p, 0, 0, b, end if end is not None else b)]
    begin = int(ts[0]) if begin is None else begin
    end = int(ts[-1]) + 1 if end is None else end
    starts, times = [0], [begin]
    for k in range(1, n_ranges):
        t = int(ts[k * n // n_ranges])
        lo = int(np.searchsorted(ts, t, side="left"))  # all tags of time t in one range
        if lo > starts[-1] and t > times[-1]:
            starts.append(lo)
            times.append(t)
    starts.append(n)
    times.append(end)
    return [NpzRange(p, starts[k], starts[k + 1], times[k], times[k + 1])
            for k in range(len(starts) - 1)]  # fmt: skip


def iter_npz_range(
    r: NpzRange,
    *,
    chunk_records: int = DEFAULT_CHUNK_RECORDS,
    progress: ProgressCallback | None = None,
) -> Iterator[TagBatch]:
    """Stream one range of :func:`split_npz` as contiguous TagBatches."""
    if chunk_records < 1:
        raise TagFileError(f"chunk_records must be >= 1, got {chunk_records}")
    return _npz_batches(r.path, chunk_records, progress, r)


def _npz_batches(
    p: str, chunk_records: int, progress: ProgressCallback | None, part: NpzRange | None = None
) -> Iterator[TagBatch]:
    """The generator behind :func:`iter_npz` (``part``: one range of it)."""
    zf, tsm, chm = _npz_members(p)
    with zf:
        begin = _npz_scalar(zf, "begin_ps", p)
        end = _npz_scalar(zf, "end_ps", p)
        done, stop = 0, tsm.n
        read_ts, read_ch = tsm.read, chm.read
        mts: np.ndarray | None = None
        if part is not None and part.begin_ps is not None and part.end_ps is not None:
            begin, end, done, stop = part.begin_ps, part.end_ps, part.start, part.stop
            mts = _stored_member(p, zf, "timestamps.npy")
            mch = _stored_member(p, zf, "channels.npy")
            if mts is None or mch is None:
                raise TagFileError(f"{p}: a compressed npz cannot be read in ranges")
            pos = [done, done]

            def read_ts(k: int) -> np.ndarray:
                pos[0] += k
                return np.array(mts[pos[0] - k : pos[0]])

            def read_ch(k: int) -> np.ndarray:
                pos[1] += k
                return np.array(mch[pos[1] - k : pos[1]])

        chunker: _Chunker | None = None
        while done < stop:
            n = min(chunk_records, stop - done)
            ts = read_ts(n)
            ch = read_ch(n)
            if ch.size and (int(ch.min()) < 0 or int(ch.max()) >= MAX_CHANNELS):
                bad = int(np.argmax((ch < 0) | (ch >= MAX_CHANNELS)))
                raise TagFileError(
                    f"{p}: channel {int(ch[bad])} at index {done + bad} is outside "
                    f"0..{MAX_CHANNELS - 1}"
                )
            ts = ts.astype(np.int64, copy=False)
            ch = ch.astype(np.uint8, copy=False)
            if chunker is None:
                if begin is not None and int(ts[0]) < begin:
                    raise TagFileError(
                        f"{p}: begin_ps {begin} is after the first tag at {int(ts[0])} ps "
                        f"(tag index 0): the measured interval must contain every tag"
                    )
                chunker = _Chunker(p, begin if begin is not None else int(ts[0]))
            # a mapped range knows the next tag's time: a chunk that ends before it is
            # emitted whole, with no carry copied into the next chunk
            known = int(mts[done + n]) if mts is not None and done + n < stop else -(2**62)
            b = chunker.push(ts, ch, known, _npz_locator(done))
            done += n
            if b is not None:
                yield b
            if progress is not None:
                progress(done, stop)
        if chunker is None:
            chunker = _Chunker(p, begin if begin is not None else 0)
        last_ps = chunker.last_tag_ps
        if end is not None and last_ps is not None and end <= last_ps:
            raise TagFileError(
                f"{p}: end_ps {end} is not after the last tag at {last_ps} ps (tag index "
                f"{stop - 1}): the measured interval [begin_ps, end_ps) must contain every tag"
            )
        if end is not None and end < chunker.prev_end:  # no tags: prev_end is the begin
            start = f"begin_ps {begin}" if begin is not None else "0 (no tags, no begin_ps)"
            raise TagFileError(f"{p}: end_ps {end} is before {start}")
        last = chunker.finish(end)
        if last is not None:
            yield last


def read_npz(path: str | os.PathLike[str]) -> TagBatch:
    """Read a whole npz tag file into one TagBatch."""
    batches = list(iter_npz(path))
    if not batches:
        p = str(path)
        with _open_npz(p) as zf:
            begin = _npz_scalar(zf, "begin_ps", p) or 0
        return TagBatch.empty(begin, begin)
    return TagBatch.concatenate(batches)


# ----------------------------------------------------------------------------- dispatch


def _kind(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".npz", ".ptu"):
        return suffix[1:]
    raise TagFileError(
        f"{path}: unknown tag file type {suffix or '(no suffix)'!r}; expected .npz or .ptu"
    )


def count_records(path: str | os.PathLike[str]) -> int:
    """Records in a tag file (PTU: header records incl. overflows; npz: tags), for progress."""
    p = str(path)
    if not os.path.exists(p):
        raise TagFileError(f"{p}: no such file")
    if _kind(p) == "ptu":
        return read_ptu_header(p).n_records
    zf, ts, _ = _npz_members(p)
    with zf:
        return ts.n


def iter_tag_file(
    path: str | os.PathLike[str],
    *,
    chunk_records: int = DEFAULT_CHUNK_RECORDS,
    sync_channel: int | str = "auto",
    progress: ProgressCallback | None = None,
) -> Iterator[TagBatch]:
    """Stream any supported tag file (``.npz`` or ``.ptu``, by suffix) as TagBatches."""
    p = str(path)
    if not os.path.exists(p):
        raise TagFileError(f"{p}: no such file")
    if _kind(p) == "ptu":
        return iter_ptu(p, chunk_records=chunk_records, sync_channel=sync_channel,
                        progress=progress)  # fmt: skip
    return iter_npz(p, chunk_records=chunk_records, progress=progress)


def read_tag_file(path: str | os.PathLike[str], *, sync_channel: int | str = "auto") -> TagBatch:
    """Read a whole tag file (``.npz`` or ``.ptu``) into one TagBatch."""
    p = str(path)
    if not os.path.exists(p):
        raise TagFileError(f"{p}: no such file")
    if _kind(p) == "ptu":
        return read_ptu(p, sync_channel=sync_channel)
    return read_npz(p)


def channel_capacity(
    path: str | os.PathLike[str], *, sync_channel: int | str = "auto"
) -> tuple[int, bool]:
    """How many channels a file's tags may use, without reading a tag: ``(n, exact)``.

    ``exact`` when a PTU header has ``HW_InpChannels``: ``n`` is that, plus the sync
    channel of HydraHarp-family files unless it is dropped. Otherwise ``n`` is the
    most the format allows (npz 256; PTU PicoHarp 15, HydraHarp family 64 and the
    sync channel), for sizing a counter whose report is then cut to the channels
    that saw tags.
    """
    p = str(path)
    if not os.path.exists(p):
        raise TagFileError(f"{p}: no such file")
    if _kind(p) == "npz":
        return MAX_CHANNELS, False
    h = read_ptu_header(p)
    sync_ch = _resolve_sync_channel(h, sync_channel)
    exact = h.n_input_channels is not None
    n = h.n_input_channels if h.n_input_channels is not None else _LAYOUT_CHANNELS[h.layout]
    if h.layout != _LAYOUT_PICOHARP and sync_ch >= 0:
        n = max(n, sync_ch + 1)
    return n, exact


def n_channels_hint(path: str | os.PathLike[str], *, sync_channel: int | str = "auto") -> int:
    """How many channels a file's tags use (highest channel + 1), cheaply where possible.

    npz: a pass over the ``channels`` array only. PTU: from the header
    (``HW_InpChannels``, plus the sync channel of HydraHarp-family files unless it
    is dropped); without that tag, a full decoding pass. (To size a counter without
    any extra pass, see :func:`channel_capacity`.)
    """
    p = str(path)
    if not os.path.exists(p):
        raise TagFileError(f"{p}: no such file")
    if _kind(p) == "ptu":
        n, exact = channel_capacity(p, sync_channel=sync_channel)
        if exact:
            return n
        hi = -1
        for b in iter_ptu(p, sync_channel=sync_channel):
            if len(b):
                hi = max(hi, int(b.channels.max()))
        return hi + 1
    zf, _, chm = _npz_members(p)
    hi = -1
    with zf:
        done = 0
        while done < chm.n:
            n = min(DEFAULT_CHUNK_RECORDS, chm.n - done)
            ch = chm.read(n)
            hi = max(hi, int(ch.max()))
            done += n
    return hi + 1
