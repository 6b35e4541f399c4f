"""Acquisition: a TagSource cut into fixed windows -> coincidences -> QBER and key rates -> records.

:class:`Windower` is the pure part: batches in (contiguous, any size), one
:class:`WindowResult` out per completed window of ``window_s`` seconds of
*tag time* (window ``k`` covers ``[t0 + k W, t0 + (k+1) W)`` where ``t0`` is the
first batch's begin). Batches are split at window edges, so a window is exact
whatever the source's batch size. Each window runs a fresh
``CoincidenceCounter`` with the current channel delays; its report gives the
singles, coincidences and CAR, ``qber_from_matrix`` the per-basis QBER and
``bbm92_key_rate`` the asymptotic secure key rate.

:class:`Acquisition` runs a Windower in a worker thread against a TagSource
(the Numba kernels release the GIL, so the asyncio loop stays responsive),
reopens a failed source with backoff, and hands each window to a callback.
It can also capture raw tags for calibration (:meth:`Acquisition.capture`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coincidence import QberReport, RoleMap, TagBatch, bbm92_key_rate, qber_from_matrix
from drivers import TagSource

log = logging.getLogger("qnet.acquisition")

#: The readings each window gives the interlock engine (:meth:`WindowResult.readings`).
WINDOW_READINGS = ("max_singles_rate_hz", "qber", "qber_z", "qber_x", "sifted_rate_hz")


@dataclass(frozen=True)
class WindowResult:
    """Everything one analysis window yields.

    ``report`` is the window's ``CoincidenceReport``; ``qber`` its per-basis
    QBER (None if no basis had sifted counts); ``secure_rate_bps`` the
    asymptotic BBM92 rate (0 when QBER is too high or unknown).
    """

    index: int
    begin_ps: int
    end_ps: int
    report: Any
    qber: QberReport | None
    sifted_rate_hz: float
    secure_rate_bps: float
    delays_ps: np.ndarray
    n_tags: int
    processing_s: float = 0.0
    time_ns: int = 0

    @property
    def duration_s(self) -> float:
        """Measured time of the window, s."""
        return (self.end_ps - self.begin_ps) * 1e-12

    @property
    def qber_z(self) -> float:
        """Z-basis QBER (nan when unknown)."""
        return self.qber.qber_z if self.qber is not None else math.nan

    @property
    def qber_x(self) -> float:
        """X-basis QBER (nan when unknown)."""
        return self.qber.qber_x if self.qber is not None else math.nan

    def link_qber(self, min_sifted: int = 0) -> float:
        """The worse of the two bases' QBER, nan if a basis has fewer than ``min_sifted``."""
        if self.qber is None:
            return math.nan
        vals = [b.qber for b in (self.qber.z, self.qber.x) if b.sifted >= max(1, min_sifted)]
        return max(vals) if vals else math.nan

    def readings(self, min_sifted: int = 100) -> dict[str, float]:
        """The readings the interlock engine watches (keys: ``WINDOW_READINGS``)."""
        rates = np.asarray(self.report.singles_rate_hz, dtype=float)
        return {
            "max_singles_rate_hz": float(rates.max()) if rates.size else 0.0,
            "qber": self.link_qber(min_sifted),
            "qber_z": self.qber_z,
            "qber_x": self.qber_x,
            "sifted_rate_hz": self.sifted_rate_hz,
        }

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly digest (status replies, the demo's log)."""
        return {
            "index": self.index,
            "duration_s": self.duration_s,
            "tags": self.n_tags,
            "singles_rate_hz": [round(float(x), 1) for x in self.report.singles_rate_hz],
            "qber_z": finite_or_none(self.qber_z),
            "qber_x": finite_or_none(self.qber_x),
            "sifted_rate_hz": self.sifted_rate_hz,
            "secure_rate_bps": self.secure_rate_bps,
            "processing_s": self.processing_s,
        }


def finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def window_records(result: WindowResult, node: str, link: str, roles: RoleMap) -> list[Any]:
    """Telemetry records of one window: singles per channel, Alice-Bob coincidences, QBER, key."""
    import telemetry as tm

    rep = result.report
    t = result.time_ns or time.time_ns()
    dur = result.duration_s
    out = [
        tm.singles(
            node=node,
            channel=c,
            counts=int(rep.singles[c]),
            rate_hz=float(rep.singles_rate_hz[c]),
            integration_s=dur,
            time_ns=t,
        )
        for c in range(int(rep.n_channels))
    ]
    window_ps = int(rep.window_ps)
    for a in sorted(roles.alice.values()):
        for b in sorted(roles.bob.values()):
            if a >= rep.n_channels or b >= rep.n_channels:
                continue
            car = float(rep.car[a, b])
            acc = float(rep.accidentals[a, b])
            out.append(
                tm.coincidences(
                    node=node,
                    link=link,
                    channel_a=a,
                    channel_b=b,
                    counts=int(rep.coincidences[a, b]),
                    accidentals=acc if math.isfinite(acc) else None,
                    car=car if math.isfinite(car) else None,
                    rate_hz=float(rep.coincidences[a, b]) / dur if dur > 0 else None,
                    window_ps=window_ps,
                    delay_ps=int(result.delays_ps[b] - result.delays_ps[a]),
                    integration_s=dur,
                    time_ns=t,
                )
            )
    if result.qber is not None:
        for basis in (result.qber.z, result.qber.x):
            if basis.sifted > 0:
                out.append(
                    tm.qber(
                        node=node,
                        link=link,
                        basis=basis.basis.lower(),
                        qber=basis.qber,
                        errors=basis.errors,
                        sifted=basis.sifted,
                        qber_low=basis.qber_interval[0],
                        qber_high=basis.qber_interval[1],
                        time_ns=t,
                    )
                )
    out.append(
        tm.key_rate(
            node=node,
            link=link,
            sifted_bps=result.sifted_rate_hz,
            secure_bps=result.secure_rate_bps,
            qber_z=finite_or_none(result.qber_z),
            qber_x=finite_or_none(result.qber_x),
            time_ns=t,
        )
    )
    return out


class Windower:
    """Cut a contiguous tag stream into windows and analyse each (pure, single-threaded).

    Args:
        n_channels: channels of the stream.
        window_s: analysis window, s of tag time.
        coincidence_window_ps: full coincidence window (pairs within +-half count).
        roles: which channel is which detector (for QBER); None skips QBER.
        delays_ps: per-channel delays subtracted before counting.
        f_ec: error-correction inefficiency for the key rate.
        key_basis: ``Z``, ``X`` or ``both`` (see ``bbm92_key_rate``).
    """

    def __init__(
        self,
        n_channels: int,
        window_s: float,
        coincidence_window_ps: int,
        roles: RoleMap | None = None,
        delays_ps: np.ndarray | list[int] | None = None,
        f_ec: float = 1.16,
        key_basis: str = "Z",
    ) -> None:
        from coincidence import CoincidenceCounter

        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"window_s must be positive, got {window_s}")
        self._counter_cls = CoincidenceCounter
        self.n_channels = int(n_channels)
        self.window_ps = round(window_s * 1e12)
        self.coincidence_window_ps = int(coincidence_window_ps)
        self.roles = roles
        self.f_ec = f_ec
        self.key_basis = key_basis
        self._delays = np.zeros(self.n_channels, np.int64)
        self._t0: int | None = None
        self._index = 0
        self._tags = 0
        self._cpu_s = 0.0
        self._pending_delays: np.ndarray | None = None
        self._base_index = 0
        self.missed = 0
        if delays_ps is not None:
            self._delays = self._check_delays(delays_ps)
        self._counter = CoincidenceCounter(
            self.n_channels, self.coincidence_window_ps, self._delays
        )

    @property
    def delays_ps(self) -> np.ndarray:
        """The delays in force from the next window on (pending ones if set), a copy."""
        pending = self._pending_delays
        return (self._delays if pending is None else pending).copy()

    def set_delays(self, delays_ps: np.ndarray | list[int]) -> None:
        """Use these delays from the next window on (the running window keeps its own).

        Safe to call from another thread: the worker applies them at a window edge.
        """
        self._pending_delays = self._check_delays(delays_ps)

    def _check_delays(self, delays_ps: np.ndarray | list[int]) -> np.ndarray:
        d = np.array(delays_ps, dtype=np.int64).reshape(-1)
        if d.shape != (self.n_channels,):
            raise ValueError(f"need {self.n_channels} delays, got {d.shape[0]}")
        return d

    def restart(self) -> None:
        """Drop the partial window and re-anchor at the next batch (after a source reopened).

        Window indices keep counting up; the dropped partial window is reported as missed.
        """
        if self._t0 is not None and self._tags:
            self.missed += 1
        self._t0 = None
        self._base_index = self._index
        self._tags = 0
        self._cpu_s = 0.0
        pending, self._pending_delays = self._pending_delays, None
        if pending is not None:
            self._delays = pending
        self._counter = self._counter_cls(self.n_channels, self.coincidence_window_ps, self._delays)

    def _edge(self) -> int:
        assert self._t0 is not None
        return self._t0 + (self._index - self._base_index + 1) * self.window_ps

    def feed(self, batch: TagBatch) -> list[WindowResult]:
        """Add one batch; returns the windows it completed (often none, sometimes several)."""
        batch.check_channels(self.n_channels, "acquisition")
        if self._t0 is None:
            pending, self._pending_delays = self._pending_delays, None
            if pending is not None:
                self._delays = pending
                self._counter = self._counter_cls(
                    self.n_channels, self.coincidence_window_ps, self._delays
                )
            self._t0 = batch.begin_ps
        out: list[WindowResult] = []
        rest: TagBatch | None = batch
        while rest is not None:
            edge = self._edge()
            if rest.end_ps < edge or (rest.end_ps == edge and rest.duration_ps == 0):
                self._process(rest)
                rest = None
                continue
            head, tail = rest.split(max(rest.begin_ps, edge))
            self._process(head)
            out.append(self._finish())
            rest = tail if tail.duration_ps > 0 or len(tail) else None
        return out

    def _process(self, batch: TagBatch) -> None:
        if batch.duration_ps == 0 and not len(batch):
            return
        t = time.thread_time()
        self._counter.process(batch)
        self._cpu_s += time.thread_time() - t
        self._tags += len(batch)

    def _finish(self) -> WindowResult:
        t = time.thread_time()
        rep = self._counter.result()
        begin = self._t0 + (self._index - self._base_index) * self.window_ps  # type: ignore[operator]
        qrep: QberReport | None = None
        sifted = 0.0
        secure = 0.0
        if self.roles is not None and rep.duration_ps > 0:
            qrep = qber_from_matrix(rep.coincidences, rep.duration_s, self.roles)
            if qrep.sifted == 0:
                qrep = None
            else:
                sifted = qrep.sifted_rate_hz
                try:
                    secure = bbm92_key_rate(qrep, f_ec=self.f_ec, key_basis=self.key_basis)
                except ValueError:
                    secure = 0.0
        result = WindowResult(
            index=self._index,
            begin_ps=begin,
            end_ps=begin + self.window_ps,
            report=rep,
            qber=qrep,
            sifted_rate_hz=float(sifted),
            secure_rate_bps=float(secure),
            delays_ps=self._delays.copy(),
            n_tags=self._tags,
            processing_s=self._cpu_s + time.thread_time() - t,
            time_ns=time.time_ns(),
        )
        self._index += 1
        self._tags = 0
        self._cpu_s = 0.0
        pending, self._pending_delays = self._pending_delays, None
        if pending is not None:
            self._delays = pending
            self._counter = self._counter_cls(
                self.n_channels, self.coincidence_window_ps, self._delays
            )
        else:
            self._counter.reset()
        return result


@dataclass
class Capture:
    """Raw tags collected for ``duration_ps`` of tag time (for calibration).

    Filled by the acquisition thread through :meth:`add` and :meth:`clear` (under the
    acquisition's lock), which keep ``collected_ps`` as a running total: summing every
    batch on each new one would cost O(batches) per batch under that lock.
    """

    duration_ps: int
    batches: list[TagBatch] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    collected_ps: int = 0

    def add(self, batch: TagBatch) -> None:
        """Append a batch (contiguous with the last one) and count its tag time."""
        self.batches.append(batch)
        self.collected_ps += batch.duration_ps

    def clear(self) -> None:
        """Drop what was collected (a gap in the stream: start over)."""
        self.batches.clear()
        self.collected_ps = 0

    def batch(self) -> TagBatch:
        """The collected tags as one batch."""
        return TagBatch.concatenate(self.batches)


class Acquisition:
    """Run a :class:`Windower` on a TagSource in a worker thread.

    Args:
        open_source: builds (and connects) the TagSource; called again after a failure.
        windower: the analysis.
        on_window: called in the worker thread with each completed window.
        on_state: called with ``"running"`` / ``"faulted: reason"`` on transitions.
        read_timeout_s: how long one ``read`` may wait.
        backoff_s: (initial, max) wait between reopen attempts.
        on_batch: called in the worker thread with every raw batch (the QKD link engine).
    """

    def __init__(
        self,
        open_source: Callable[[], TagSource],
        windower: Windower,
        on_window: Callable[[WindowResult], None],
        on_state: Callable[[str], None] | None = None,
        read_timeout_s: float = 0.5,
        backoff_s: tuple[float, float] = (0.2, 5.0),
        on_batch: Callable[[TagBatch], None] | None = None,
    ) -> None:
        self.on_batch = on_batch
        self.open_source = open_source
        self.windower = windower
        self.on_window = on_window
        self.on_state = on_state or (lambda s: None)
        self.read_timeout_s = read_timeout_s
        self.backoff_s = backoff_s
        self.state = "stopped"
        self.windows = 0
        self.source_errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._captures: list[Capture] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the worker thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="qnet-acquisition", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the worker to stop without waiting: no window is handed on from now on."""
        self._stop.set()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Ask the worker to stop and wait for it (up to ``timeout_s``); ends every capture."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        with self._lock:
            caps, self._captures = self._captures, []
        for cap in caps:  # nobody waits for tags that will not come
            cap.error = "acquisition stopped"
            cap.done.set()

    def capture(self, duration_s: float) -> Capture:
        """Start collecting raw tags for ``duration_s`` of tag time; wait on ``.done``.

        Several captures may run at once (calibration, drift tracking, compensation).
        Once stopping, the capture comes back done with an error (no tags will come).
        """
        cap = Capture(round(duration_s * 1e12))
        with self._lock:
            if not self._stop.is_set():
                self._captures.append(cap)
                return cap
        cap.error = "acquisition stopped"
        cap.done.set()
        return cap

    def capture_progress(self) -> dict[str, float] | None:
        """Tag time collected / wanted by the longest running capture (None when idle), s."""
        with self._lock:
            caps = list(self._captures)
        if not caps:
            return None
        cap = max(caps, key=lambda c: c.duration_ps)
        return {"collected_s": cap.collected_ps * 1e-12, "duration_s": cap.duration_ps * 1e-12}

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.on_state(state)

    def _run(self) -> None:
        delay = self.backoff_s[0]
        opened = False
        while not self._stop.is_set():
            try:
                source = self.open_source()
            except Exception as exc:
                self.source_errors += 1
                self._set_state(f"faulted: cannot open tag source: {exc}")
                self._stop.wait(delay)
                delay = min(self.backoff_s[1], delay * 2)
                continue
            delay = self.backoff_s[0]
            if opened:
                self.windower.restart()
            opened = True
            self._set_state("running")
            try:
                self._loop(source)
            except Exception as exc:
                self.source_errors += 1
                log.warning("tag source failed: %s", exc)
                self._set_state(f"faulted: {exc}")
                self._stop.wait(delay)
            finally:
                source.close()
        self._set_state("stopped")

    def _loop(self, source: TagSource) -> None:
        while not self._stop.is_set():
            batch = source.read(self.read_timeout_s)
            if batch is None:
                raise ConnectionError("tag source ended")
            with self._lock:
                for cap in self._captures:
                    if cap.batches and batch.begin_ps != cap.batches[-1].end_ps:
                        cap.clear()  # a gap (source reopened): start over
                    cap.add(batch)
                    if cap.collected_ps >= cap.duration_ps:
                        cap.done.set()
                self._captures = [c for c in self._captures if not c.done.is_set()]
            if self.on_batch is not None:
                self.on_batch(batch)
            for result in self.windower.feed(batch):
                if self._stop.is_set():
                    return  # stopping: hand nothing more on (the daemon is in its safe state)
                self.windows += 1
                try:
                    self.on_window(result)
                except Exception:
                    log.exception("window callback failed")
