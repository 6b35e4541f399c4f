"""The demo's adapter to the QKD link engine (``controller.qkd_link``), with its I/O pump.

``qnet demo --link`` needs, at both sites: the engine reading that site's tagger
stream, talking to the other site over a ``channel.ChannelEndpoint`` (CURVE, pinned
keys) through the WAN emulator, writing identical blocks into the site's key store;
and, at the end, the figures of the verdict. The engine is sans-I/O
(``SenderLink`` / ``AnalyserLink``: tag batches and peer messages in, messages out)
and has no driver over a real endpoint yet, so :class:`_SitePump` here is that
driver: one thread per site, the only thread that touches its engine. This module
is the one place that knows the engine's API.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class LinkEngineMissing(RuntimeError):
    """The link engine (or the clock tracker it needs) is not part of this installation."""


class RunningLink(Protocol):
    """What the demo needs of a running link."""

    def drain(self, timeout_s: float) -> None:
        """Stop feeding tags; let the frames in flight finish (at most ``timeout_s``)."""

    def figures(self) -> dict[str, Any]:
        """The verdict's figures (see :func:`controller.demo_link.judge`)."""

    def stop(self) -> None:
        """Stop both sites; idempotent."""


def available() -> bool:
    """True when the link engine and the reference-free clock tracker are installed."""
    if importlib.util.find_spec("controller.qkd_link") is None:
        return False
    import coincidence

    return hasattr(coincidence, "ClockTracker")


def link_config(link: str) -> Any:
    """Both sites' link settings for the emulated two-site testbed (channels 0..3 each)."""
    import distill as ds
    from controller.qkd_link import LinkConfig

    return LinkConfig(
        link=link,
        detectors={"H": 0, "V": 1, "D": 2, "A": 3},
        bell_state="phi+",
        epoch_ps=500_000_000_000,
        frame_bits=2**17,
        q_expected=0.03,
        finite=ds.FiniteKeyConfig(q_tol=0.08),
        acquire_span_ps=5 * 10**12,
        track_window_ps=500_000_000_000,
    )


class _SitePump:
    """One site: its tagger's stream and its channel endpoint into its engine, in one thread."""

    def __init__(self, name: str, engine: Any, source: Any, endpoint: Any) -> None:
        self.name = name
        self.engine = engine
        self.source = source
        self.endpoint = endpoint
        self.error = ""
        self.feeding = True
        """False: no more tags, only the peer's messages (let the pipeline drain)."""
        self.tags = 0
        self.sim_ps = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._batches: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"link-{name}")
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"tags-{name}")

    def start(self) -> _SitePump:
        self._reader.start()
        self._thread.start()
        return self

    def _send(self, msgs: list[Any]) -> None:
        from channel import ChannelFullError

        for m in msgs:
            while not self._stop.is_set():
                try:
                    self.endpoint.send(m)
                    break
                except ChannelFullError:  # the peer lags: wait for acknowledgements
                    time.sleep(0.05)

    def _read(self) -> None:
        """The tagger's stream into the queue (its own thread: reads block)."""
        try:
            while not self._stop.is_set():
                batch = self.source.read(timeout_s=0.5)
                if batch is None:
                    return
                if batch.duration_ps > 0 and self.feeding:
                    self._batches.put(batch)
        except Exception as exc:  # reported in the verdict, never a silent dead thread
            self.error = f"tag stream: {type(exc).__name__}: {exc}"

    def _run(self) -> None:
        # The peer's messages without delay (Cascade is many round trips), tags as they come.
        try:
            while not self._stop.is_set():
                msg = self.endpoint.receive(timeout_s=0.002)
                with self._lock:
                    while msg is not None:
                        self._send(self.engine.receive(msg))
                        msg = self.endpoint.receive(timeout_s=0)
                    for _ in range(20):
                        try:
                            batch = self._batches.get_nowait()
                        except queue.Empty:
                            break
                        self.tags += len(batch)
                        self.sim_ps += batch.duration_ps
                        self._send(self.engine.feed_tags(batch))
        except Exception as exc:  # reported in the verdict, never a silent dead thread
            self.error = f"{type(exc).__name__}: {exc}"

    def report(self) -> Any:
        with self._lock:
            return self.engine.report()

    def stop(self) -> None:
        self._stop.set()
        for t in (self._thread, self._reader):
            if t.is_alive():
                t.join(timeout=10)


class _Link:
    """Both sites' pumps, endpoints, taggers and stores; stopped once."""

    def __init__(self) -> None:
        self.pumps: dict[str, _SitePump] = {}
        self.closers: list[Callable[[], None]] = []
        self.started = time.monotonic()
        self._stopped = False

    def drain(self, timeout_s: float) -> None:
        """Stop reading tags at both sites; let the messages in flight finish (bounded)."""
        for p in self.pumps.values():
            p.feeding = False
        a, b = self.pumps["alice"], self.pumps["bob"]
        deadline = time.monotonic() + timeout_s
        last: tuple[int, ...] = ()
        still_since = time.monotonic()
        while time.monotonic() < deadline:
            with a._lock, b._lock:
                busy = any(p._batches.qsize() for p in (a, b)) or any(
                    r.state in ("estimating", "reconciling")
                    for side in (a, b)
                    for r in side.engine.records.values()
                )
                now = (a.engine.sifted_bits, b.engine.sifted_bits, len(b.engine.records))
            if now != last or busy:
                last, still_since = now, time.monotonic()
            elif time.monotonic() - still_since > 1.0:
                return
            time.sleep(0.1)

    def figures(self) -> dict[str, Any]:
        a = self.pumps["alice"]
        b = self.pumps["bob"]
        ra, rb = a.report(), b.report()
        with a._lock, b._lock:
            la = [(e, len(bits)) for e, bits in a.engine.sifted_log]
            lb = [(e, len(bits)) for e, bits in b.engine.sifted_log]
            common = min(len(a.engine.sifted_log), len(b.engine.sifted_log))
            errors = n = 0
            for (ea, xa), (eb, xb) in zip(
                a.engine.sifted_log[:common], b.engine.sifted_log[:common], strict=True
            ):
                if ea == eb and len(xa) == len(xb):
                    errors += int((xa != xb).sum())
                    n += len(xa)
        k = min(len(la), len(lb))

        def num(x: float) -> float | None:
            return float(x) if x is not None and math.isfinite(x) else None

        return {
            "clock_locked": rb.lock_state == "locked",
            "lock_state": rb.lock_state,
            "lock_time_s": num(rb.lock_time_s),
            "clock_offset_ps": num(rb.offset_ps),
            "clock_offset_err_ps": num(rb.offset_uncertainty_ps),
            "clock_ppm": num(rb.ppm),
            "clock_ppm_err": num(rb.ppm_uncertainty),
            "sifted_bits_alice": ra.sifted_bits,
            "sifted_bits_bob": rb.sifted_bits,
            "sifted_epochs_compared": k,
            "sifted_positions_identical": k > 0 and la[:k] == lb[:k],
            "sifted_bit_error_rate": errors / n if n else None,
            "qber_z": num(rb.qber_z),
            "qber_z_low": num(rb.qber_z_low),
            "qber_z_high": num(rb.qber_z_high),
            "qber_x": num(rb.qber_x),
            "qber_x_low": num(rb.qber_x_low),
            "qber_x_high": num(rb.qber_x_high),
            "ec_efficiency": num(rb.ec_efficiency),
            "secret_bits": rb.secret_bits,
            "secret_bps": num(rb.secret_rate_bps),
            "sifted_bps": num(rb.sifted_rate_bps),
            "frames": rb.frames,
            "blocks_stored_alice": ra.blocks_stored,
            "blocks_stored_bob": rb.blocks_stored,
            "blocks_discarded": rb.blocks_discarded,
            "frames_aborted": rb.frames_aborted,
            "refused": ra.refused + rb.refused,
            "sim_time_s": b.sim_ps / 1e12,
            "tags_alice": a.tags,
            "tags_bob": b.tags,
            "errors": {s: p.error for s, p in self.pumps.items() if p.error},
            "frame_states": {
                s: {str(fid): r.state for fid, r in p.engine.records.items()}
                for s, p in self.pumps.items()
            },
            "last_error": rb.last_error or ra.last_error,
            "report_alice": _plain(ra.as_dict()),
            "report_bob": _plain(rb.as_dict()),
            "channel_alice": self.pumps["alice"].endpoint.counters(),
            "channel_bob": self.pumps["bob"].endpoint.counters(),
            "channel_errors": {
                s: repr(p.endpoint.error) for s, p in self.pumps.items() if p.endpoint.error
            },
        }

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for p in self.pumps.values():
            p.stop()
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):  # one part must not keep the others open
                close()


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def start(
    *,
    cfg: Any,
    keys: Path,
    stores: tuple[Path, Path],
    link: str,
    wan: dict[str, float],
    wan_factory: Callable[..., Any],
    open_tagger: Callable[[Any, str], tuple[Any, Any]],
    run_dir: Path,
) -> RunningLink:
    """Start the link engine at both sites (see the module docstring)."""
    if not available():
        raise LinkEngineMissing(
            "the QKD link engine (controller.qkd_link) or the reference-free clock tracker "
            "(coincidence.ClockTracker) is not part of this installation"
        )
    from channel import ChannelEndpoint, key_paths
    from controller.qkd_link import AnalyserLink, SenderLink
    from kms import KeyStore

    out = _Link()
    try:
        lcfg = link_config(link)
        store_a = KeyStore(stores[0], site_index=0)
        out.closers.append(store_a.close)
        store_b = KeyStore(stores[1], site_index=1)
        out.closers.append(store_b.close)
        pub_a, sec_a = key_paths("alice", keys)
        pub_b, sec_b = key_paths("bob", keys)
        # Bob's endpoint binds; Alice reaches it only through the WAN emulator
        ep_b = ChannelEndpoint.from_key_files(
            role="server",
            address="tcp://127.0.0.1:0",
            secret_key_file=sec_b,
            peer_public_key_file=pub_a,
            link=link,
        ).start()
        out.closers.append(ep_b.close)
        host_port = ep_b.address.rsplit("/", 1)[-1]
        host, port = host_port.rsplit(":", 1)
        emulator = wan_factory((host, int(port)), **wan).start()
        out.closers.append(emulator.stop)
        ep_a = ChannelEndpoint.from_key_files(
            role="client",
            address=emulator.address,
            secret_key_file=sec_a,
            peer_public_key_file=pub_b,
            link=link,
        ).start()
        out.closers.append(ep_a.close)
        sites = (
            ("alice", "alice_tagger", SenderLink(lcfg, store_a, record_sifted=True), ep_a),
            ("bob", "bob_tagger", AnalyserLink(lcfg, store_b, record_sifted=True), ep_b),
        )
        for site, tagger, engine, ep in sites:
            driver, source = open_tagger(cfg, tagger)
            out.closers.append(driver.close)
            out.closers.append(source.close)
            out.pumps[site] = _SitePump(site, engine, source, ep)
        for p in out.pumps.values():
            p.start()
    except Exception:
        out.stop()
        raise
    return out
