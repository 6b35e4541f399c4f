"""The demo's adapter to the QKD link engine (``controller.qkd_link``), with its I/O pump.

``qnet demo --link`` needs, at both sites: the engine reading that site's tagger
stream, talking to the other site over a ``channel.ChannelEndpoint`` (CURVE, pinned
keys) through the WAN emulator, writing identical blocks into the site's key store;
and, at the end, the figures of the verdict. The engine is sans-I/O
(``SenderLink`` / ``AnalyserLink``: tag batches and peer messages in, messages out)
and its ``LinkPump`` steps one over an endpoint; :class:`_SitePump` here feeds a
pump from the site's tagger stream (a reader thread) and steps it continuously (a
worker thread). This module is the one place that knows the engine's API.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import secrets
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


def link_configs(sites_dir: Path, link: str) -> tuple[Any, Any]:
    """Both sites' engine settings: the ``qkd_link`` sections of the two node configs."""
    from controller._daemon_config import load_daemon_config

    out = []
    for node in ("alice", "bob"):
        section = load_daemon_config(sites_dir / f"{node}-link.yaml").daemon.qkd_link
        if section is None:
            raise LinkEngineMissing(f"{node}-link.yaml has no daemon.qkd_link section")
        out.append(section.engine_config(link))
    return out[0], out[1]


def _in_flight(rep: Any) -> int:
    """Frames started and not yet ended (stored, discarded, aborted or empty)."""
    ended = rep.blocks_stored + rep.blocks_discarded + rep.frames_aborted + rep.frames_empty
    return int(rep.frames - ended)


class _SitePump:
    """One site: its tagger's stream into the engine's ``LinkPump``, the pump stepped.

    A reader thread offers each batch; a worker thread steps the pump continuously
    (the peer's messages without delay: Cascade is many round trips over the WAN).
    """

    def __init__(self, name: str, pump: Any, source: Any) -> None:
        self.name = name
        self.pump = pump
        self.source = source
        self.error = ""
        self.feeding = True
        """False: no more tags, only the peer's messages (let the pipeline drain)."""
        self.tags = 0
        self.sim_ps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"link-{name}")
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"tags-{name}")

    @property
    def engine(self) -> Any:
        return self.pump.engine

    @property
    def endpoint(self) -> Any:
        return self.pump.endpoint

    def start(self) -> _SitePump:
        self._reader.start()
        self._thread.start()
        return self

    def _read(self) -> None:
        """The tagger's stream into the pump (its own thread: reads block)."""
        try:
            while not self._stop.is_set():
                batch = self.source.read(timeout_s=0.5)
                if batch is None:
                    return
                if batch.duration_ps > 0 and self.feeding:
                    self.tags += len(batch)
                    self.sim_ps += batch.duration_ps
                    self.pump.offer(batch)
        except Exception as exc:  # reported in the verdict, never a silent dead thread
            self.error = f"tag stream: {type(exc).__name__}: {exc}"

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.pump.step(0.002)
        except Exception as exc:  # reported in the verdict, never a silent dead thread
            self.error = f"{type(exc).__name__}: {exc}"

    def report(self) -> Any:
        return self.pump.report()[0]

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
            ra, rb = a.report(), b.report()
            busy = a.pump.backlog or b.pump.backlog or _in_flight(ra) or _in_flight(rb)
            now = (ra.sifted_bits, rb.sifted_bits, rb.frames)
            if now != last or busy:
                last, still_since = now, time.monotonic()
            elif time.monotonic() - still_since > 1.0:
                return
            time.sleep(0.1)

    def figures(self) -> dict[str, Any]:
        """The verdict's figures; stops both pumps first (the engines are read directly)."""
        a, b = self.pumps["alice"], self.pumps["bob"]
        for p in (a, b):
            p.stop()
        ra, rb = a.report(), b.report()
        la = [(e, len(bits)) for e, bits in a.engine.sifted_log]
        lb = [(e, len(bits)) for e, bits in b.engine.sifted_log]
        common = min(len(la), len(lb))
        errors = n = 0
        for (ea, xa), (eb, xb) in zip(
            a.engine.sifted_log[:common], b.engine.sifted_log[:common], strict=True
        ):
            if ea == eb and len(xa) == len(xb):
                errors += int((xa != xb).sum())
                n += len(xa)

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
            "sifted_epochs_compared": common,
            "sifted_positions_identical": common > 0 and la[:common] == lb[:common],
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
            "frames_in_flight": _in_flight(rb),
            "blocks_stored_alice": ra.blocks_stored,
            "blocks_stored_bob": rb.blocks_stored,
            "blocks_discarded": rb.blocks_discarded,
            "frames_aborted": rb.frames_aborted,
            "refused": ra.refused + rb.refused,
            "auth": b.engine.cfg.auth,
            "auth_bits_taken": getattr(b.engine.auth_stream, "taken_bits", 0),
            "cascade_prefer": b.engine.cfg.cascade_prefer,
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
            "channel_alice": a.endpoint.counters(),
            "channel_bob": b.endpoint.counters(),
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
    sites_dir: Path,
) -> RunningLink:
    """Start the link engine at both sites (see the module docstring).

    The engine's settings come from the two sites' node configs in ``sites_dir``
    (``alice-link.yaml`` / ``bob-link.yaml``, section ``daemon.qkd_link``); the channel
    addresses, key files, stores and pre-shared secret there are a deployment's, the
    demo uses its own.
    """
    if not available():
        raise LinkEngineMissing(
            "the QKD link engine (controller.qkd_link) or the reference-free clock tracker "
            "(coincidence.ClockTracker) is not part of this installation"
        )
    from channel import ChannelEndpoint, key_paths
    from controller.qkd_link import AnalyserLink, LinkPump, SenderLink
    from kms import KeyStore

    out = _Link()
    try:
        cfg_alice, cfg_bob = link_configs(sites_dir, link)
        if cfg_alice.auth != cfg_bob.auth:
            raise LinkEngineMissing(
                f"the sites disagree on qkd_link.auth ({cfg_alice.auth} / {cfg_bob.auth})"
            )
        psk = secrets.token_bytes(4096) if cfg_alice.auth == "wegman-carter" else None
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
            (
                "alice",
                "alice_tagger",
                SenderLink(cfg_alice, store_a, record_sifted=True, auth_secret=psk),
                ep_a,
            ),
            (
                "bob",
                "bob_tagger",
                AnalyserLink(cfg_bob, store_b, record_sifted=True, auth_secret=psk),
                ep_b,
            ),
        )
        for site, tagger, engine, ep in sites:
            driver, source = open_tagger(cfg, tagger)
            out.closers.append(driver.close)
            out.closers.append(source.close)
            out.pumps[site] = _SitePump(site, LinkPump(engine, ep), source)
        for p in out.pumps.values():
            p.start()
    except Exception:
        out.stop()
        raise
    return out
