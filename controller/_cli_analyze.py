"""``qnet analyze FILE``: singles, coincidences, CAR, QBER and key rates of a tag file.

Reads ``.npz`` or PicoQuant ``.ptu`` T2 files in chunks (any size) through the
coincidence core and prints rich tables, or JSON with ``--json``.
``--find-delay CH_A CH_B`` instead finds the delay between two channels;
``--g2 A,B`` (with ``--herald H``) prints g2(0) with its uncertainty and plots
the normalised g2(tau) to a PNG.

Progress: a transient progress bar (on stderr, driven by records read) appears
only when the run has taken longer than a second and stderr is a terminal, so
short runs, pipes and ``--json`` output stay clean.

The rendering helpers (``analysis_dict``, ``print_analysis``) are shared with
``qnet sample``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from controller._json import jsonable

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from coincidence import (
        CoincidenceReport,
        DelayEstimate,
        G2Curve,
        G2Zero,
        QberReport,
        RoleMap,
    )

_LABELS = ("H", "V", "D", "A")
#: Seconds a run must take before the progress bar appears.
PROGRESS_DELAY_S = 1.0
#: Without a terminal: seconds before the first plain progress line, and between lines.
PLAIN_DELAY_S = 10.0
PLAIN_EVERY_S = 10.0


class UsageError(Exception):
    """Bad input to ``qnet analyze``: reported as one line on stderr, exit code 2."""


def _fail(command: str, message: str) -> NoReturn:
    """Print one error line naming the problem and exit with code 2."""
    from controller._cli_options import fail

    fail(command, message)


# ----------------------------------------------------------------------------- parsing


def parse_delays(text: str | None) -> list[int] | None:
    """``"0,1200,-300"`` -> ``[0, 1200, -300]`` (picoseconds, one per channel)."""
    if text is None or not text.strip():
        return None
    out = []
    for k, part in enumerate(text.split(",")):
        try:
            out.append(int(part.strip()))
        except ValueError:
            raise UsageError(
                f"--delays-ps: item {k} ({part.strip()!r}) is not an integer number of ps"
            ) from None
    return out


def _parse_side(side: str, value: str) -> dict[str, int]:
    """``"0,1,2,3"`` -> ``{"H": 0, "V": 1, "D": 2, "A": 3}`` (H,V,D,A order; 2 = H,V only)."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if len(parts) not in (2, 4):
        raise UsageError(f"--roles: {side} needs 2 (H,V) or 4 (H,V,D,A) channels, got {value!r}")
    out = {}
    for label, p in zip(_LABELS, parts, strict=False):
        try:
            out[label] = int(p)
        except ValueError:
            raise UsageError(f"--roles: {side} channel {p!r} is not an integer") from None
    return out


def parse_roles(text: str | None, bell_state: str | None) -> RoleMap | None:
    """A RoleMap from ``"alice=0,1,2,3 bob=4,5,6,7"`` or a YAML/JSON file; None if no text."""
    from coincidence import CoincidenceError, RoleMap

    if text is None or not text.strip():
        if bell_state is not None:
            raise UsageError("--bell-state needs --roles (which channel is which detector)")
        return None
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.is_file():
        if not path.is_file():
            raise UsageError(f"--roles: role file {text} does not exist")
        try:
            raw = path.read_text()
            if path.suffix.lower() == ".json":
                data = json.loads(raw)
            else:
                from configfile import load_mapping

                data = load_mapping(path, "role file").data
        except (OSError, ValueError) as e:
            raise UsageError(f"--roles: cannot read role file {text}: {e}") from None
        if isinstance(data, dict) and "roles" in data and "alice" not in data:
            data = data["roles"]
        if not isinstance(data, dict):
            raise UsageError(f"--roles: role file {text} must hold a mapping with alice and bob")
        if bell_state is not None:
            data = {**data, "bell_state": bell_state}
        try:
            return RoleMap.from_dict(data)
        except (CoincidenceError, TypeError, ValueError) as e:
            raise UsageError(f"--roles: {text}: {e}") from None
    sides: dict[str, dict[str, int]] = {}
    for item in text.replace(";", " ").split():
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in ("alice", "bob"):
            raise UsageError(
                f"--roles: expected 'alice=H,V,D,A bob=H,V,D,A' channel lists or a YAML/JSON "
                f"file, got {item!r}"
            )
        sides[key] = _parse_side(key, value)
    for key in ("alice", "bob"):
        if key not in sides:
            raise UsageError(f"--roles: no channels for {key} (e.g. alice=0,1,2,3 bob=4,5,6,7)")
    try:
        return RoleMap(alice=sides["alice"], bob=sides["bob"], bell_state=bell_state or "phi+")
    except CoincidenceError as e:
        raise UsageError(f"--roles: {e}") from None


def parse_sync_channel(text: str) -> int | str:
    """``auto`` / ``drop`` / a channel number."""
    t = text.strip().lower()
    if t in ("auto", "drop"):
        return t
    try:
        n = int(t)
    except ValueError:
        raise UsageError(
            f"--sync-channel must be 'auto', 'drop' or a channel number, got {text!r}"
        ) from None
    if not 0 <= n < 256:
        raise UsageError(f"--sync-channel {n} is outside 0..255")
    return n


# ----------------------------------------------------------------------------- progress


class DelayedProgress:
    """Progress on stderr once a run has taken ``delay_s`` seconds.

    Call the instance with ``(done, total)`` records; use as a context manager. On a
    terminal (or with ``force=True``) a transient rich bar; otherwise (a pipe, a log)
    one plain line every ``PLAIN_EVERY_S`` seconds, so short runs stay silent.
    """

    def __init__(
        self, description: str, *, delay_s: float = PROGRESS_DELAY_S, force: bool = False
    ) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = force or self.console.is_terminal
        self.last_plain = 0.0
        self.description = description
        self.delay_s = delay_s
        self.t0 = time.monotonic()
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.shown = False

    def __enter__(self) -> DelayedProgress:
        self.t0 = time.monotonic()
        return self

    def __call__(self, done: int, total: int) -> None:
        """Update with records done / total; start the bar once the delay has passed."""
        if not self.enabled:
            now = time.monotonic()
            if now - self.t0 >= PLAIN_DELAY_S and now - self.last_plain >= PLAIN_EVERY_S:
                self.last_plain = now
                pct = 100.0 * done / total if total else 0.0
                print(
                    f"{self.description}: {done} of {total} records ({pct:.0f} %), "
                    f"{now - self.t0:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
            return
        if self.progress is None:
            if time.monotonic() - self.t0 < self.delay_s:
                return
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("records"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task(self.description, total=total)
            self.shown = True
        assert self.task is not None
        self.progress.update(self.task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


# ----------------------------------------------------------------------------- the work

#: Time ranges per worker thread when a file is counted in parallel (load balance).
RANGES_PER_WORKER = 4
#: Fewest tags per time range worth a range of its own (smaller files: one pass).
MIN_RANGE_TAGS = 1 << 20
#: Coincidence window when neither ``--window-ps`` nor the file gives one, ps.
DEFAULT_WINDOW_PS = 1000
#: Mean QBER above which an analysis without delays says the delays are probably missing.
MISSING_DELAYS_QBER = 0.35


def file_settings(path: str) -> dict[str, Any]:
    """Roles, delays and window stored in an npz file's metadata (``qnet sample`` writes them).

    Returns only the keys present, validated: ``roles`` (a RoleMap), ``delays_ps``
    (list of int) and ``window_ps`` (int). PTU files carry none: ``{}``.
    """
    from coincidence import CoincidenceError, RoleMap, read_npz_metadata

    if not path.lower().endswith(".npz"):
        return {}
    try:
        meta = read_npz_metadata(path)
    except CoincidenceError as e:
        raise UsageError(str(e)) from None
    out: dict[str, Any] = {}
    if meta.get("roles") is not None:
        try:
            out["roles"] = RoleMap.from_dict(meta["roles"])
        except (CoincidenceError, TypeError, ValueError) as e:
            raise UsageError(f"{path}: metadata roles: {e}") from None
    delays = meta.get("delays_ps")
    if delays is not None:
        if not isinstance(delays, list) or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in delays
        ):
            raise UsageError(f"{path}: metadata delays_ps must be a list of integers (ps)")
        out["delays_ps"] = delays
    window = meta.get("window_ps")
    if window is not None:
        if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
            raise UsageError(f"{path}: metadata window_ps must be a positive integer (ps)")
        out["window_ps"] = window
    return out


def missing_delays_hint(qber: QberReport | None, delays: Sequence[int] | None) -> str | None:
    """A hint when QBER is near 50 % and no delays were given: they are probably missing."""
    if qber is None or (delays is not None and any(int(d) != 0 for d in delays)):
        return None
    values = [b.qber for b in (qber.z, qber.x) if b.qber is not None and math.isfinite(b.qber)]
    if not values or sum(values) / len(values) < MISSING_DELAYS_QBER:
        return None
    mean = 100 * sum(values) / len(values)
    return (
        f"QBER {mean:.1f} % is near 50 % and no channel delays were given: the delays are "
        "probably missing. Find them with --find-delay CH_A CH_B (one per Bob channel) and "
        "pass them with --delays-ps, or store them in the file (qnet sample does)"
    )


def _delays_mismatch(n_delays: int, n_channels: int) -> UsageError:
    return UsageError(
        f"--delays-ps has {n_delays} values but there are {n_channels} channels "
        "(give one delay per channel)"
    )


def _first_channels(report: CoincidenceReport, n: int) -> CoincidenceReport:
    """The report restricted to channels ``0..n-1`` (every figure is per channel or pair)."""
    from dataclasses import replace

    return replace(
        report,
        n_channels=n,
        delays_ps=report.delays_ps[:n],
        singles=report.singles[:n],
        coincidences=report.coincidences[:n, :n],
        accidentals=report.accidentals[:n, :n],
        car=report.car[:n, :n],
    )


def count_file(
    path: str,
    *,
    window_ps: int,
    delays_ps: Sequence[int] | None,
    n_channels: int | None,
    sync_channel: int | str = "auto",
    chunk_records: int | None = None,
    workers: int | None = None,
    segment_tags: int | None = None,
    min_range_tags: int = MIN_RANGE_TAGS,
) -> CoincidenceReport:
    """Stream a tag file through the coincidence counter; UsageError on bad input.

    ``workers`` threads count time ranges in parallel (default: every CPU this
    process may use); the result is the same as one counter's. A file of at least
    ``2 * min_range_tags`` records is cut into time ranges (an uncompressed npz at tag
    times, a PTU after overflow records) that each worker reads and counts itself;
    smaller or unsplittable files are read in this thread and counted in ranges of
    about ``segment_tags`` tags by the workers.

    Without ``n_channels``, one pass: a PTU header's channel count when it has one,
    else a counter as wide as the format allows, its report then cut to the channels
    that saw tags (or the delay list, if longer), as a separate scan would give.
    """
    from coincidence import (
        DEFAULT_CHUNK_RECORDS,
        DEFAULT_SEGMENT_TAGS,
        ChannelError,
        CoincidenceCounter,
        CoincidenceError,
        NpzRange,
        PtuRange,
        TagBatch,
        channel_capacity,
        count_parallel,
        count_ranges_parallel,
        count_records,
        iter_npz_range,
        iter_ptu_range,
        iter_tag_file,
        split_npz,
        split_ptu,
    )

    n_delays = len(delays_ps) if delays_ps is not None else 0
    counter_delays = delays_ps
    trim = False
    try:
        if n_channels is None:
            # a longer delay list may name channels that saw no tags
            n_channels, exact = channel_capacity(path, sync_channel=sync_channel)
            n_channels = max(n_channels, n_delays, 1)
            if delays_ps is not None and not exact and n_delays < n_channels:
                # channels without a delay must stay empty: checked on the result
                pad = min(delays_ps) if n_delays else 0
                counter_delays = [*delays_ps, *[pad] * (n_channels - n_delays)]
            trim = not exact
        if counter_delays is not None and len(counter_delays) != n_channels:
            raise _delays_mismatch(n_delays, n_channels)
        CoincidenceCounter(n_channels, window_ps, counter_delays)  # named errors first
        n_ch = n_channels

        def checked(batches: Iterable[TagBatch]) -> Iterator[TagBatch]:
            for batch in batches:
                try:
                    batch.check_channels(n_ch, "qnet analyze")
                except ChannelError:
                    hi = int(batch.channels.max())
                    raise UsageError(
                        f"{path}: channel {hi} is out of range for {n_ch} channels "
                        f"(0..{n_ch - 1}); raise --channels to at least {hi + 1}"
                    ) from None
                yield batch

        with DelayedProgress(f"reading {Path(path).name}") as bar:
            n_workers = workers or len(os.sched_getaffinity(0))
            n_tags = count_records(path)
            n_ranges = min(RANGES_PER_WORKER * n_workers, n_tags // max(1, min_range_tags))
            ranges: Sequence[NpzRange | PtuRange] = []
            if n_ranges > 1:
                ranges = (
                    split_npz(path, n_ranges)
                    if is_npz(path)
                    else split_ptu(path, n_ranges, sync_channel=sync_channel)
                )
            if len(ranges) > 1:
                # every worker reads (decodes) and counts its own time ranges of the file
                total = sum(r.stop - r.start for r in ranges)
                lock = threading.Lock()
                done = [0]
                chunk = chunk_records or DEFAULT_CHUNK_RECORDS

                def source(r: NpzRange | PtuRange) -> Iterator[TagBatch]:
                    last = [r.start]

                    def step(k: int, _n: int) -> None:
                        with lock:
                            done[0] += k - last[0]
                            last[0] = k
                            bar(done[0], total)

                    if isinstance(r, NpzRange):
                        return checked(iter_npz_range(r, chunk_records=chunk, progress=step))
                    return checked(iter_ptu_range(r, chunk_records=chunk, progress=step))

                return_report = count_ranges_parallel(
                    [lambda r=r: source(r) for r in ranges],
                    n_channels, window_ps, counter_delays, workers=n_workers,
                )  # fmt: skip
                return _trimmed(return_report, trim, delays_ps, n_delays)
            batches = iter_tag_file(
                path,
                chunk_records=chunk_records or DEFAULT_CHUNK_RECORDS,
                sync_channel=sync_channel,
                progress=bar,
            )
            report = count_parallel(
                checked(batches), n_channels, window_ps, counter_delays, workers=workers,
                segment_tags=segment_tags or DEFAULT_SEGMENT_TAGS,
            )  # fmt: skip
    except CoincidenceError as e:
        raise UsageError(str(e)) from None
    return _trimmed(report, trim, delays_ps, n_delays)


def is_npz(path: str) -> bool:
    """True for an ``.npz`` tag file (by suffix, as the readers decide)."""
    return Path(path).suffix.lower() == ".npz"


def _trimmed(
    report: CoincidenceReport, trim: bool, delays_ps: Sequence[int] | None, n_delays: int
) -> CoincidenceReport:
    """Cut a report as wide as the format allows to the channels that saw tags."""
    import numpy as np

    if trim:
        used = int(np.flatnonzero(report.singles)[-1]) + 1 if report.singles.any() else 0
        n_used = max(used, n_delays, 1)
        if delays_ps is not None and n_delays != n_used:
            raise _delays_mismatch(n_delays, n_used)
        report = _first_channels(report, n_used)
    return report


def find_delay_file(
    path: str,
    channel_a: int,
    channel_b: int,
    *,
    max_delay_ps: int,
    resolution_ps: int,
    min_significance: float,
    sync_channel: int | str = "auto",
) -> DelayEstimate:
    """Collect two channels' tags from a file and find their delay (``t_b - t_a``)."""
    import numpy as np

    from coincidence import CoincidenceError, NoSignificantPeakError, find_delay, iter_tag_file

    for name, ch in (("CH_A", channel_a), ("CH_B", channel_b)):
        if not 0 <= ch < 256:
            raise UsageError(f"--find-delay {name} = {ch} is outside 0..255")
    if channel_a == channel_b:
        raise UsageError(f"--find-delay needs two different channels, got {channel_a} twice")
    ta: list[np.ndarray] = []
    tb: list[np.ndarray] = []
    try:
        with DelayedProgress(f"reading {Path(path).name}") as bar:
            for batch in iter_tag_file(path, sync_channel=sync_channel, progress=bar):
                ta.append(batch.timestamps[batch.channels == channel_a])
                tb.append(batch.timestamps[batch.channels == channel_b])
        a = np.concatenate(ta) if ta else np.empty(0, np.int64)
        b = np.concatenate(tb) if tb else np.empty(0, np.int64)
        for name, ch, arr in (("CH_A", channel_a, a), ("CH_B", channel_b, b)):
            if arr.size == 0:
                raise UsageError(f"{path}: channel {ch} ({name}) has no tags")
        return find_delay(
            a,
            b,
            max_delay_ps=max_delay_ps,
            resolution_ps=resolution_ps,
            min_significance=min_significance,
        )
    except NoSignificantPeakError:
        raise
    except CoincidenceError as e:
        raise UsageError(str(e)) from None


def parse_g2_channels(text: str) -> tuple[int, int]:
    """``"1,2"`` -> ``(1, 2)``: the two HBT channels of ``--g2``."""
    parts = [p.strip() for p in text.split(",")]
    try:
        a, b = (int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--g2 needs two channel numbers 'A,B', got {text!r}") from None
    for ch in (a, b):
        if not 0 <= ch < 256:
            raise UsageError(f"--g2 channel {ch} is outside 0..255")
    if a == b:
        raise UsageError(f"--g2 needs two different channels, got {a} twice")
    return a, b


def g2_file(
    path: str,
    channel_a: int,
    channel_b: int,
    herald: int | None,
    *,
    window_ps: int,
    delays_ps: Sequence[int] | None,
    bin_ps: int,
    range_ps: int,
    sync_channel: int | str = "auto",
) -> tuple[G2Zero, G2Curve]:
    """Stream a file once: g2(0) in the window (heralded when ``herald`` is given) and g2(tau).

    ``delays_ps`` (one per channel, or None) are subtracted from each channel's tags.
    """
    import numpy as np

    from coincidence import (
        CoincidenceCounter,
        CoincidenceError,
        CorrelationHistogram,
        HeraldedG2Counter,
        TagBatch,
        g2_zero,
        iter_tag_file,
        window_lags,
    )

    used = [channel_a, channel_b] + ([] if herald is None else [herald])
    if herald is not None and herald in (channel_a, channel_b):
        raise UsageError(f"--herald {herald} must differ from the --g2 channels")
    if delays_ps is not None and max(used) >= len(delays_ps):
        raise UsageError(
            f"--delays-ps has {len(delays_ps)} values but --g2/--herald use channel {max(used)}"
        )
    d = [int(delays_ps[c]) if delays_ps is not None else 0 for c in used]
    if bin_ps <= 0 or range_ps <= 0 or range_ps % bin_ps:
        raise UsageError(
            f"--g2-range-ps ({range_ps}) must be a positive multiple of --g2-bin-ps ({bin_ps})"
        )
    try:
        hist = CorrelationHistogram(channel_a, channel_b, bin_ps, range_ps, d[1] - d[0])
        pair = CoincidenceCounter(2, window_ps, d[:2])
        heralded = (
            None
            if herald is None
            else HeraldedG2Counter(herald, channel_a, channel_b, window_ps, (d[2], d[0], d[1]))
        )
        with DelayedProgress(f"reading {Path(path).name}") as bar:
            for batch in iter_tag_file(path, sync_channel=sync_channel, progress=bar):
                hist.process(batch)
                if heralded is not None:
                    heralded.process(batch)
                ch = batch.channels
                sel = (ch == channel_a) | (ch == channel_b)
                two = TagBatch(
                    batch.timestamps[sel],
                    (ch[sel] == channel_b).astype(np.uint8),
                    batch.begin_ps,
                    batch.end_ps,
                )
                pair.process(two)
        rep = pair.result()
        curve = hist.result().g2()
        if heralded is not None:
            zero = heralded.result()
        else:
            zero = g2_zero(
                int(rep.singles[0]),
                int(rep.singles[1]),
                int(rep.coincidences[0, 1]),
                window_lags(window_ps),
                rep.duration_ps,
            )
    except CoincidenceError as e:
        raise UsageError(str(e)) from None
    return zero, curve


def plot_g2(curve: G2Curve, path: Path, title: str) -> Figure:
    """Plot g2(tau) with its 1-sigma band to ``path`` (PNG); returns the Figure (not closed).

    Linear y axis unless the positive values span more than two decades (then log);
    tau in ns, the bin width in the y label, the Poisson level g2 = 1 drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure

    tau_ns = curve.tau_ps / 1000.0
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    lo = np.maximum(curve.g2 - curve.g2_err, 0.0)
    ax.fill_between(tau_ns, lo, curve.g2 + curve.g2_err, step="mid", alpha=0.3,
                    color="tab:blue", label="1 sigma (Poisson)")  # fmt: skip
    ax.step(tau_ns, curve.g2, where="mid", color="tab:blue", label="g2(tau)")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="Poisson light (g2 = 1)")
    positive = curve.g2[curve.g2 > 0]
    if positive.size and positive.max() / positive.min() > 100:
        ax.set_yscale("log")
    half = curve.bin_width_ps / 2000.0
    ax.set_xlim(float(tau_ns[0]) - half, float(tau_ns[-1]) + half)
    top = float(np.max(curve.g2 + curve.g2_err)) if curve.g2.size else 1.0
    if ax.get_yscale() == "linear":
        ax.set_ylim(0.0, max(1.2, 1.05 * top))
    ax.set_xlabel("tau = t_B - t_A - delay (ns)")
    ax.set_ylabel(f"g2(tau), {curve.bin_width_ps} ps bins")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def key_rates(
    report: CoincidenceReport, roles: RoleMap | None, f_ec: float, key_basis: str
) -> tuple[QberReport | None, float | None, str | None]:
    """QBER per basis and the asymptotic BBM92 secure key rate (bits/s), with a note if none."""
    from coincidence import CoincidenceError, bbm92_key_rate, qber_from_matrix

    if roles is None:
        return None, None, "no --roles given: QBER and key rates need the detector roles"
    if report.duration_ps <= 0:
        return None, None, "no measured time: QBER and rates undefined"
    if roles.max_channel >= report.n_channels:
        raise UsageError(
            f"--roles uses channel {roles.max_channel} but there are only "
            f"{report.n_channels} channels (0..{report.n_channels - 1})"
        )
    try:
        qber = qber_from_matrix(report.coincidences, report.duration_s, roles)
    except CoincidenceError as e:
        raise UsageError(str(e)) from None
    try:
        secure = bbm92_key_rate(qber, f_ec=f_ec, key_basis=key_basis)
    except CoincidenceError as e:
        return qber, None, str(e)
    return qber, secure, None


def analysis_dict(
    report: CoincidenceReport,
    *,
    source: str,
    roles: RoleMap | None,
    qber: QberReport | None,
    secure_rate_bps: float | None,
    note: str | None,
    f_ec: float,
    key_basis: str,
) -> dict[str, Any]:
    """Everything ``qnet analyze --json`` prints, as plain JSON-ready values."""
    out: dict[str, Any] = {
        "file": source,
        "n_channels": report.n_channels,
        "window_ps": report.window_ps,
        "delays_ps": report.delays_ps,
        "duration_ps": report.duration_ps,
        "duration_s": report.duration_s,
        "singles": report.singles,
        "singles_rate_hz": report.singles_rate_hz,
        "coincidences": report.coincidences,
        "coincidence_rate_hz": report.coincidence_rate_hz,
        "accidentals": report.accidentals,
        "car": report.car,
        "roles": None,
        "qber": None,
        "sifted": None,
        "sifted_rate_hz": None,
        "secure_key_rate_bps": secure_rate_bps,
        "f_ec": f_ec,
        "key_basis": key_basis,
        "note": note,
    }
    if roles is not None:
        out["roles"] = {"alice": roles.alice, "bob": roles.bob, "bell_state": roles.bell_state}
    if qber is not None:
        out["qber"] = {
            b.basis: {
                "sifted": b.sifted,
                "errors": b.errors,
                "qber": b.qber,
                "sifted_rate_hz": b.sifted_rate_hz,
            }
            for b in (qber.z, qber.x)
        }
        out["sifted"] = qber.sifted
        out["sifted_rate_hz"] = qber.sifted_rate_hz
    return jsonable(out)


def _fmt(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}g}"


def print_analysis(console: Console, d: dict[str, Any], *, max_pairs: int = 40) -> None:
    """Render an ``analysis_dict`` as rich tables."""
    from rich.table import Table

    n = d["n_channels"]
    role_of: dict[int, str] = {}
    if d["roles"]:
        for side in ("alice", "bob"):
            for label, ch in d["roles"][side].items():
                role_of[ch] = f"{side} {label}"
    console.print(
        f"[bold]{d['file']}[/]: {d['duration_s']:.6g} s measured, {n} channels, "
        f"window {d['window_ps']} ps"
    )
    t = Table(title="Singles")
    for col in ("channel", "role", "delay (ps)", "counts", "rate (Hz)"):
        t.add_column(col, justify="right" if col != "role" else "left")
    for c in range(n):
        t.add_row(
            str(c),
            role_of.get(c, ""),
            str(d["delays_ps"][c]),
            str(d["singles"][c]),
            _fmt(d["singles_rate_hz"][c]),
        )
    console.print(t)

    m = Table(title=f"Coincidences (counts in a {d['window_ps']} ps window)")
    m.add_column("", justify="right", style="bold")
    for c in range(n):
        m.add_column(str(c), justify="right")
    for i in range(n):
        m.add_row(str(i), *(str(d["coincidences"][i][j]) if i != j else "-" for j in range(n)))
    console.print(m)

    pairs = [
        (i, j)
        for i in range(n)
        for j in range(i + 1, n)
        if d["coincidences"][i][j] > 0 or (i in role_of and j in role_of)
    ]
    if pairs:
        p = Table(title="Pairs: coincidences, accidentals and CAR")
        for col in ("pair", "coincidences", "rate (Hz)", "accidentals", "CAR"):
            p.add_column(col, justify="right")
        for i, j in pairs[:max_pairs]:
            p.add_row(
                f"{i}-{j}",
                str(d["coincidences"][i][j]),
                _fmt(d["coincidence_rate_hz"][i][j]),
                _fmt(d["accidentals"][i][j]),
                _fmt(d["car"][i][j]),
            )
        console.print(p)
        if len(pairs) > max_pairs:
            console.print(f"({len(pairs) - max_pairs} more pairs: use --json)")

    if d["qber"] is not None:
        q = Table(title=f"QBER ({d['roles']['bell_state']})")
        for col in ("basis", "sifted", "errors", "QBER", "sifted rate (Hz)"):
            q.add_column(col, justify="right")
        for basis, b in d["qber"].items():
            qb = "-" if b["qber"] is None else f"{100 * b['qber']:.2f} %"
            q.add_row(basis, str(b["sifted"]), str(b["errors"]), qb, _fmt(b["sifted_rate_hz"]))
        console.print(q)
        k = Table(title="Key rates")
        k.add_column("quantity")
        k.add_column("value", justify="right")
        k.add_row("sifted rate", f"{_fmt(d['sifted_rate_hz'])} Hz")
        rate = d["secure_key_rate_bps"]
        k.add_row(
            f"secure key rate (BBM92, f_EC {d['f_ec']}, key {d['key_basis']})",
            "-" if rate is None else f"{_fmt(rate)} bit/s",
        )
        console.print(k)
    if d.get("settings_from_file"):
        names = ", ".join(d["settings_from_file"])
        console.print(f"settings from the file's metadata: {names} (options override them)")
    if d["note"]:
        console.print(f"[yellow]note:[/] {d['note']}")


def print_delay(console: Console, est: DelayEstimate, ch_a: int, ch_b: int) -> None:
    """Render a DelayEstimate as a small table (the delay with its 1-sigma uncertainty)."""
    from rich.table import Table

    from controller.calibration import format_with_uncertainty

    delay = format_with_uncertainty(est.delay_fit_ps, est.delay_uncertainty_ps)
    console.print(
        f"Delay of channel {ch_b} relative to channel {ch_a} (t_b - t_a): [bold]{delay}[/]",
        soft_wrap=True,
    )
    t = Table()
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("delay", delay)
    t.add_row("peak width (sigma)", f"{est.peak_sigma_ps:.1f} ps")
    t.add_row("significance", f"{est.significance:.1f} sigma")
    t.add_row(f"peak counts (window of {est.peak_window_bins} bins)", _fmt(est.peak_counts))
    t.add_row("background per bin", _fmt(est.background_counts))
    t.add_row("resolution", f"{est.resolution_ps} ps")
    console.print(t)


def print_g2(
    zero: G2Zero,
    a: int,
    b: int,
    herald: int | None,
    window_ps: int,
    png: Path,
    as_json: bool,
    source: str,
) -> None:
    """Print g2(0) +- sigma (one line, or JSON) and where the plot went."""
    if as_json:
        out = {
            "file": source,
            "channel_a": a,
            "channel_b": b,
            "herald": herald,
            "window_ps": window_ps,
            "g2_0": zero.g2,
            "g2_0_sigma": zero.sigma,
            "heralded": zero.heralded,
            "counts": zero.counts,
            "png": str(png),
        }
        typer.echo(json.dumps(jsonable(out)))
        return
    kind = f"heralded by channel {herald}" if herald is not None else "two-fold"
    typer.echo(
        f"g2(0) = {zero.g2:.4f} +- {zero.sigma:.4f} ({kind}, channels {a} and {b}, "
        f"window {window_ps} ps; counts {zero.counts})"
    )
    typer.echo(f"g2(tau) plot: {png}")


# ----------------------------------------------------------------------------- command


def analyze(
    file: Annotated[Path, typer.Argument(help="tag file: .npz (timestamps, channels) or .ptu T2")],
    window_ps: Annotated[
        int | None,
        typer.Option(
            "--window-ps", help="coincidence window, full width, ps (default: file's, or 1000)"
        ),
    ] = None,
    delays_ps: Annotated[
        str | None,
        typer.Option(
            "--delays-ps",
            help="comma list, one delay per channel, ps (subtracted from that channel's tags)",
        ),
    ] = None,
    channels: Annotated[
        int | None,
        typer.Option("--channels", help="number of channels (default: from the data)"),
    ] = None,
    roles: Annotated[
        str | None,
        typer.Option(
            "--roles",
            help="detector roles: 'alice=0,1,2,3 bob=4,5,6,7' (H,V,D,A order) or a "
            "YAML/JSON file with alice/bob maps",
        ),
    ] = None,
    bell_state: Annotated[
        str | None,
        typer.Option("--bell-state", help="phi+, phi-, psi+ or psi- (default phi+)"),
    ] = None,
    f_ec: Annotated[
        float, typer.Option("--f-ec", help="error-correction inefficiency (>= 1)")
    ] = 1.16,
    key_basis: Annotated[
        str, typer.Option("--key-basis", help="key basis for the key rate: Z, X or both")
    ] = "both",
    sync_channel: Annotated[
        str,
        typer.Option(
            "--sync-channel",
            help="PTU HydraHarp/MultiHarp sync events: 'auto' (channel HW_InpChannels), "
            "'drop', or a channel number",
        ),
    ] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
    find_delay: Annotated[
        tuple[int, int] | None,
        typer.Option(
            "--find-delay",
            metavar="CH_A CH_B",
            help="find the delay t_b - t_a between two channels instead of analysing",
        ),
    ] = None,
    max_delay_ps: Annotated[
        int, typer.Option("--max-delay-ps", help="--find-delay: search +- this range, ps")
    ] = 1_000_000,
    resolution_ps: Annotated[
        int, typer.Option("--resolution-ps", help="--find-delay: delay resolution, ps")
    ] = 10,
    min_significance: Annotated[
        float,
        typer.Option("--min-significance", help="--find-delay: required peak height, sigma"),
    ] = 6.0,
    g2: Annotated[
        str | None,
        typer.Option(
            "--g2",
            metavar="A,B",
            help="print g2(0) +- sigma of two HBT channels and plot g2(tau) to a PNG",
        ),
    ] = None,
    herald: Annotated[
        int | None,
        typer.Option("--herald", help="--g2: herald channel H for the heralded g2(0)"),
    ] = None,
    g2_bin_ps: Annotated[int, typer.Option("--g2-bin-ps", help="--g2: bin width, ps")] = 100,
    g2_range_ps: Annotated[
        int, typer.Option("--g2-range-ps", help="--g2: plot tau in +- this range, ps")
    ] = 50_000,
    g2_png: Annotated[
        Path | None,
        typer.Option("--g2-png", help="--g2: PNG path (default: next to FILE)"),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", help="threads counting time ranges in parallel (default: all CPUs)"
        ),
    ] = None,
) -> None:
    """Singles, coincidence matrix, accidentals, CAR, QBER per basis and key rates of a file.

    Exit codes: 0 ok; 1 --find-delay found no significant peak; 2 bad input.
    """
    from rich.console import Console

    from coincidence import NoSignificantPeakError

    path = str(file)
    try:
        if not file.exists():
            raise UsageError(f"{path}: no such file")
        if file.is_dir():
            raise UsageError(f"{path} is a directory, not a tag file")
        sync = parse_sync_channel(sync_channel)
        if find_delay is not None:
            if max_delay_ps <= 0 or resolution_ps <= 0:
                raise UsageError("--max-delay-ps and --resolution-ps must be positive")
            ch_a, ch_b = find_delay
            try:
                est = find_delay_file(
                    path,
                    ch_a,
                    ch_b,
                    max_delay_ps=max_delay_ps,
                    resolution_ps=resolution_ps,
                    min_significance=min_significance,
                    sync_channel=sync,
                )
            except NoSignificantPeakError as e:
                typer.echo(f"qnet analyze: no delay found: {e}", err=True)
                raise typer.Exit(1) from None
            if as_json:
                typer.echo(
                    json.dumps(
                        jsonable(
                            {
                                "file": path,
                                "channel_a": ch_a,
                                "channel_b": ch_b,
                                "delay_ps": est.delay_ps,
                                "delay_uncertainty_ps": est.delay_uncertainty_ps,
                                "peak_sigma_ps": est.peak_sigma_ps,
                                "significance": est.significance,
                                "peak_counts": est.peak_counts,
                                "background_counts": est.background_counts,
                                "resolution_ps": est.resolution_ps,
                            }
                        )
                    )
                )
            else:
                print_delay(Console(), est, ch_a, ch_b)
            return
        meta = file_settings(path)
        if herald is not None and g2 is None:
            raise UsageError("--herald needs --g2 A,B (the two channels after the beam splitter)")
        from_file = [k for k in ("roles", "delays_ps", "window_ps") if k in meta]
        if window_ps is None:
            window_ps = int(meta.get("window_ps", DEFAULT_WINDOW_PS))
        else:
            from_file = [k for k in from_file if k != "window_ps"]
        if window_ps <= 0:
            raise UsageError(f"--window-ps must be positive, got {window_ps}")
        if channels is not None and not 1 <= channels <= 256:
            raise UsageError(f"--channels must be in 1..256, got {channels}")
        if not (math.isfinite(f_ec) and f_ec >= 1.0):
            raise UsageError(f"--f-ec must be >= 1 (1 is the Shannon limit), got {f_ec}")
        if key_basis not in ("Z", "X", "both"):
            raise UsageError(f"--key-basis must be Z, X or both, got {key_basis!r}")
        delays = parse_delays(delays_ps)
        if delays is None and "delays_ps" in meta:
            delays = meta["delays_ps"]
        else:
            from_file = [k for k in from_file if k != "delays_ps"]
        if delays is not None and channels is not None and len(delays) != channels:
            raise UsageError(
                f"--delays-ps has {len(delays)} values but --channels is {channels} "
                "(give one delay per channel)"
            )
        if g2 is not None:
            ga, gb = parse_g2_channels(g2)
            zero, curve = g2_file(
                path, ga, gb, herald, window_ps=window_ps, delays_ps=delays,
                bin_ps=g2_bin_ps, range_ps=g2_range_ps, sync_channel=sync,
            )  # fmt: skip
            png = g2_png or file.with_name(f"{file.stem}-g2-{ga}-{gb}.png")
            title = f"g2(tau) of channels A = {ga}, B = {gb}" + (
                f", herald {herald}" if herald is not None else ""
            )
            try:
                plot_g2(curve, png, title)
            except OSError as e:
                raise UsageError(f"cannot write {png}: {e.strerror or e}") from None
            print_g2(zero, ga, gb, herald, window_ps, png, as_json, path)
            return
        role_map = parse_roles(roles, bell_state)
        if role_map is None and "roles" in meta:
            role_map = meta["roles"]
        else:
            from_file = [k for k in from_file if k != "roles"]
        if workers is not None and not 1 <= workers <= 1024:
            raise UsageError(f"--workers must be in 1..1024, got {workers}")
        report = count_file(
            path,
            window_ps=window_ps,
            delays_ps=delays,
            n_channels=channels,
            sync_channel=sync,
            workers=workers,
        )
        qber, secure, note = key_rates(report, role_map, f_ec, key_basis)
        hint = missing_delays_hint(qber, delays)
        if hint:
            note = hint if note is None else f"{hint}; {note}"
    except UsageError as e:
        _fail("analyze", str(e))
    d = analysis_dict(
        report,
        source=path,
        roles=role_map,
        qber=qber,
        secure_rate_bps=secure,
        note=note,
        f_ec=f_ec,
        key_basis=key_basis,
    )
    d["settings_from_file"] = from_file
    if as_json:
        typer.echo(json.dumps(d))
    else:
        print_analysis(Console(), d)


def register(app: typer.Typer) -> None:
    """Add ``qnet analyze`` to the command line."""
    app.command("analyze")(analyze)
