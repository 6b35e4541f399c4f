"""The link's upkeep inside a node daemon: its config section and the service the daemon composes.

Config (``daemon.qkd_link`` of the daemon YAML; ``daemon.link`` already names the link)::

    daemon:
      link: alice-bob
      qkd_link:
        role: sender                     # sender (Alice) | analyser (Bob)
        channel:
          role: client                   # client connects, server binds
          address: tcp://bob-lab.example:5560
          secret_key_file: keys/alice.key_secret
          peer_public_key_file: keys/bob.key
        detectors: {H: 0, V: 1, D: 2, A: 3}   # this node's tagger channels
        epoch_s: 1.0
        frame_bits: 262144
        store: keys/alice-kms.sqlite     # the KME's key store (kms.KeyStore)
        site_index: 0                    # must differ between the two sites
        kme_config: kme-a.yaml           # optional: serve ETSI 014 from this node
        cascade_prefer: rounds           # leak (default) | rounds (fewer round trips: WAN)
        auth: wegman-carter              # channel (default) | wegman-carter
        auth_secret_file: keys/alice-bob.psk   # wegman-carter: the pre-shared secret

The daemon offers every tag batch of its acquisition to :meth:`LinkService.offer`
and publishes :meth:`LinkService.records` once a second; ``status()`` goes into
``qnet status``. Relative paths resolve against the daemon config's folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from coincidence import TagBatch

log = logging.getLogger("qnet.link")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LinkChannelConfig(_Section):
    """The classical channel to the peer node (ZeroMQ CURVE with pinned keys)."""

    role: Literal["server", "client"]
    address: str = Field(pattern=r"^tcp://[^\s]+:\d+$")
    secret_key_file: Path
    peer_public_key_file: Path
    heartbeat_timeout_s: float = Field(10.0, gt=0.0, le=600.0)


class QkdLinkConfig(_Section):
    """One node's side of a QKD link (both nodes must agree on all but role/detectors/files)."""

    role: Literal["sender", "analyser"]
    channel: LinkChannelConfig
    detectors: dict[str, int] = Field(default_factory=lambda: {"H": 0, "V": 1, "D": 2, "A": 3})
    bell_state: str = "phi+"
    correlation: dict[str, str] = Field(default_factory=dict)
    epoch_s: float = Field(1.0, gt=0.0, le=100.0)
    resolution_ps: int = Field(125, ge=1, le=1_000_000)
    window_ps: int = Field(2000, ge=2, le=1_000_000_000)
    frame_bits: int = Field(2**18, ge=1024, le=2**24)
    q_expected: float = Field(0.03, ge=0.0, lt=0.5)
    q_tol: float = Field(0.05, gt=0.0, lt=0.5)
    eps_sec: float = Field(1e-10, gt=0.0, lt=1.0)
    eps_cor: float = Field(1e-15, gt=0.0, lt=1.0)
    max_offset_s: float = Field(1.0, gt=0.0, le=10.0)
    max_ppm: float = Field(100.0, gt=0.0, le=1000.0)
    acquire_span_s: float = Field(10.0, ge=0.001, le=1000.0)
    track_window_s: float = Field(1.0, ge=1e-4, le=100.0)
    max_pending_epochs: int = Field(16, ge=1, le=10_000)
    cascade_prefer: Literal["leak", "rounds"] = "leak"
    auth: Literal["channel", "wegman-carter"] = "channel"
    auth_secret_file: Path | None = Field(
        None, description="wegman-carter: the pre-shared secret, the same file at both nodes"
    )
    store: Path
    site_index: Literal[0, 1]
    kme_config: Path | None = Field(None, description="a KME config to serve ETSI 014 from")
    report_interval_s: float = Field(1.0, gt=0.0, le=3600.0)

    @model_validator(mode="after")
    def _check(self) -> QkdLinkConfig:
        from ._config import LinkConfigError

        try:
            self.engine_config("check")
        except LinkConfigError as e:
            raise ValueError(str(e)) from None
        if self.auth == "wegman-carter" and self.auth_secret_file is None:
            raise ValueError(
                "auth: wegman-carter needs auth_secret_file (the pre-shared secret both "
                "nodes hold; make one with `qnet keys psk FILE`)"
            )
        if (self.role == "sender") != (self.site_index == 0):
            # not required by the store, but a fixed convention keeps the two configs apart
            log.debug("qkd_link: sender at site_index %d", self.site_index)
        return self

    def engine_config(self, link: str) -> Any:
        """The engine's ``LinkConfig`` for link ``link``."""
        import distill as ds

        from ._config import LinkConfig

        return LinkConfig(
            link=link,
            detectors=dict(self.detectors),
            bell_state=self.bell_state,
            correlation=dict(self.correlation),
            epoch_ps=round(self.epoch_s * 1e12),
            resolution_ps=self.resolution_ps,
            window_ps=self.window_ps,
            frame_bits=self.frame_bits,
            q_expected=self.q_expected,
            finite=ds.FiniteKeyConfig(q_tol=self.q_tol, eps_sec=self.eps_sec, eps_cor=self.eps_cor),
            max_offset_ps=self.max_offset_s * 1e12,
            max_ppm=self.max_ppm,
            acquire_span_ps=round(self.acquire_span_s * 1e12),
            track_window_ps=round(self.track_window_s * 1e12),
            max_pending_epochs=self.max_pending_epochs,
            cascade_prefer=self.cascade_prefer,
            auth=self.auth,
        )

    def auth_secret_path(self, base_dir: Path) -> Path | None:
        """Where the Wegman-Carter pre-shared secret is (None with the channel's authentication)."""
        if self.auth != "wegman-carter" or self.auth_secret_file is None:
            return None
        path = self.auth_secret_file
        return path if path.is_absolute() else base_dir / path

    def auth_secret(self, base_dir: Path) -> bytes | None:
        """The pre-shared secret for Wegman-Carter (None with the channel's authentication)."""
        path = self.auth_secret_path(base_dir)
        return None if path is None else read_auth_secret(path)


class LinkService:
    """The link's upkeep: channel endpoint, engine, key store, KME, reports (one per link)."""

    def __init__(self, cfg: QkdLinkConfig, *, node: str, link: str, base_dir: Path) -> None:
        self.cfg = cfg
        self.node = node
        self.link = link
        self.base_dir = base_dir
        self.engine: Any = None
        self.pump: Any = None
        self.store: Any = None
        self.endpoint: Any = None
        self.kme: Any = None
        self.state = "stopped"
        self.error = ""
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._last: dict[str, Any] = {}
        self.dropped_batches = 0

    def _path(self, p: Path) -> Path:
        return p if p.is_absolute() else self.base_dir / p

    async def start(self) -> None:
        """Open the store, the channel end and (if configured) the KME; start the engine task."""
        from channel import ChannelEndpoint
        from kms import KeyStore

        from ._engine import AnalyserLink, SenderLink
        from ._runner import LinkPump, run_link

        c = self.cfg
        try:
            self.store = KeyStore(self._path(c.store), site_index=c.site_index)
            ecfg = c.engine_config(self.link)
            side = SenderLink if c.role == "sender" else AnalyserLink
            psk_path = c.auth_secret_path(self.base_dir)
            psk = None if psk_path is None else read_auth_secret(psk_path)
            self.engine = side(ecfg, self.store, auth_secret=psk)
            state_file = self._path(c.store).with_suffix(".channel.json")
            last = _read_last_epochs(state_file)
            self.endpoint = ChannelEndpoint.from_key_files(
                role=c.channel.role,
                address=c.channel.address,
                secret_key_file=self._path(c.channel.secret_key_file),
                peer_public_key_file=self._path(c.channel.peer_public_key_file),
                link=self.link,
                heartbeat_timeout_s=c.channel.heartbeat_timeout_s,
                last_epochs=last,
            ).start()
            self._state_file = state_file
            self.pump = LinkPump(self.engine, self.endpoint)
            if c.kme_config is not None:
                await self._start_kme(self._path(c.kme_config))
            if psk_path is not None and psk is not None:  # last: a failed start spends no secret
                claim_auth_secret(psk_path, psk, link=self.link)
        except BaseException:
            await self.close()  # nothing half-open: the port, the KME and the store go again
            raise
        self._stop = asyncio.Event()
        self._tasks.append(asyncio.create_task(run_link(self.pump, self._stop), name="qnet-link"))
        self.state = "running"
        log.info(
            "link %s: %s side started (%s %s)", self.link, c.role, c.channel.role, c.channel.address
        )

    async def _start_kme(self, path: Path) -> None:
        import yaml

        from kms import KmeConfig, start_kme

        data = yaml.safe_load(path.read_text())
        cfg = KmeConfig.model_validate(data.get("kme", data) if isinstance(data, dict) else data)
        self.kme = await start_kme(cfg)

    async def report_loop(self, submit: Callable[[list[Any]], None] | None) -> None:
        """Every ``report_interval_s``: refresh the status and hand the record to ``submit``."""
        while not self._stop.is_set():
            await asyncio.sleep(self.cfg.report_interval_s)
            try:
                recs = await asyncio.to_thread(self.records, time.time_ns())
            except Exception as e:  # a report must never stop the link
                self.error = f"link report failed: {e}"
                continue
            if submit is not None and recs:
                submit(recs)

    def offer(self, batch: TagBatch) -> None:
        """A tag batch of this node's tagger (any thread); dropped while stopped."""
        if self.pump is None or self.state != "running":
            self.dropped_batches += 1
            return
        self.pump.offer(batch)

    def records(self, time_ns: int) -> list[Any]:
        """The ``link`` telemetry record now."""
        from ._records import link_record

        if self.pump is None:
            return []
        rep, counters = self.pump.report()
        stats = self.store.stats() if self.store is not None else None
        self._last = {"report": rep.as_dict(), "channel": counters}
        return [
            link_record(rep, node=self.node, counters=counters, store_stats=stats, time_ns=time_ns)
        ]

    def status(self) -> dict[str, Any]:
        """For ``qnet status``: role, state, lock, rates, blocks and the channel."""
        rep = self._last.get("report")
        if rep is None and self.engine is not None:
            rep = self.engine.report().as_dict()
        out: dict[str, Any] = {"role": self.cfg.role, "state": self.state, "error": self.error}
        if rep is not None:
            keys = (
                "lock_state",
                "offset_ps",
                "ppm",
                "epochs",
                "sifted_rate_bps",
                "qber_z",
                "qber_x",
                "secret_rate_bps",
                "ec_efficiency",
                "blocks_stored",
                "blocks_discarded",
            )
            out.update({k: _json_number(rep.get(k)) for k in keys})
        ch = self._last.get("channel")
        if ch is not None:
            out["channel_connected"] = bool(ch.get("connected"))
            out["channel_tx_bytes_per_s"] = ch.get("bytes_sent_per_s")
        if self.kme is not None:
            out["kme_url"] = self.kme.url
        return out

    async def close(self) -> None:
        """Stop the engine task, save the channel's epoch record, close everything."""
        self._stop.set()
        for t in self._tasks:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 2.0)
        self._tasks.clear()
        if self.endpoint is not None:
            with contextlib.suppress(Exception):
                _write_last_epochs(self._state_file, self.endpoint.last_epochs())
            await asyncio.to_thread(self.endpoint.close)
        if self.kme is not None:
            with contextlib.suppress(Exception):
                await self.kme.stop()
        if self.store is not None:
            self.store.close()
        self.state = "stopped"


def read_auth_secret(path: Path) -> bytes:
    """A pre-shared secret file's bytes; ValueError naming the file and what is wrong."""
    from distill import MIN_AUTH_SECRET_BYTES

    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read the pre-shared secret {path}: {e.strerror}") from None
    if len(data) < MIN_AUTH_SECRET_BYTES:
        raise ValueError(
            f"the pre-shared secret {path} has {len(data)} bytes, at least "
            f"{MIN_AUTH_SECRET_BYTES} are needed (make one with `qnet keys psk FILE`)"
        )
    return data


def claim_auth_secret(path: Path, data: bytes, *, link: str) -> bytes:
    """Record, durably, that this node's link now uses the secret ``data`` read from ``path``.

    Wegman-Carter spends the secret as one-time pads (Wegman and Carter 1981) and the
    key stream's position lives in the running engine, so a link that starts again
    from the same secret would use pads twice. The record (``FILE.used``: the secret's
    SHA-256, the link, when) is written before the first frame; a second start from
    the same secret is refused with what to do. A new secret (other bytes) is accepted.
    ValueError naming the file and the fix.
    """
    digest = hashlib.sha256(data).hexdigest()
    marker = path.with_name(path.name + ".used")
    try:
        previous = json.loads(marker.read_text())
    except FileNotFoundError:
        previous = None
    except (OSError, ValueError) as e:
        raise ValueError(
            f"cannot read {marker} (the record that {path} is in use): {e}; if the secret "
            f"is fresh at both sites, delete {marker.name}"
        ) from None
    if isinstance(previous, dict) and previous.get("sha256") == digest:
        raise ValueError(
            f"the pre-shared secret {path} was already used by link "
            f"{previous.get('link', '?')!r} since {previous.get('first_used_utc', '?')}: "
            "Wegman-Carter spends it as one-time pads, so a restarted link must not start "
            f"from it again. Make a fresh one (`qnet keys psk {path} --overwrite`), copy it "
            "to the other node by a trusted path and restart both daemons"
        )
    record = {
        "sha256": digest,
        "link": link,
        "first_used_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        _write_json_durably(marker, record)
    except OSError as e:
        raise ValueError(
            f"cannot record that the pre-shared secret {path} is in use ({marker}: "
            f"{e.strerror}); without that record a restart could reuse its one-time pads: "
            "make the directory writable by the daemon"
        ) from None
    return data


def _json_number(v: Any) -> Any:
    if isinstance(v, float) and v != v:
        return None
    return v


def _read_last_epochs(path: Path) -> dict[Any, int] | None:
    from channel import MessageType

    try:
        data = json.loads(path.read_text())
        return {MessageType(int(k)): int(v) for k, v in data.items()}
    except (OSError, ValueError, TypeError):
        return None


def _write_last_epochs(path: Path, last: dict[Any, int]) -> None:
    _write_json_durably(path, {str(int(k)): int(v) for k, v in last.items()})


def _write_json_durably(path: Path, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as JSON, all or nothing, on disk before returning."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
