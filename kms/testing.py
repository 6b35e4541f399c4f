"""Helpers shared by the tests, the benchmarks and the demo: a KME pair, kill -9 of a store.

:func:`kme_pair_configs` writes a test PKI and two KME configs (site 0 ``kme-a`` with
the master SAE, site 1 ``kme-b`` with the slave SAE); :class:`KmeThread` serves one KME
from a background thread with its own event loop (a real aiohttp server with TLS).

:func:`run_and_kill` SIGKILLs a child process that writes into a :class:`KeyStore`
(adding blocks or issuing keys) and returns what it saw confirmed;
:func:`store_kill_scenario` repeats that and counts what a kill lost or handed out twice
(``tests/kms/test_store.py`` and ``benchmarks/reliability.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import random
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

from kms._config import KmeConfig, SaePair
from kms._errors import KmsError
from kms._keyid import parse_key_id
from kms._pki import TestPki, make_test_pki
from kms._server import KmeServer, start_kme
from kms._store import KeyStore

MASTER_SAE = "sae-master"
SLAVE_SAE = "sae-slave"


def kme_pair_configs(directory: str | Path) -> tuple[KmeConfig, KmeConfig, TestPki]:
    """Configs of two KMEs on free loopback ports and the PKI they and their SAEs use."""
    out = Path(directory)
    pki = make_test_pki(out / "pki", ["kme-a", "kme-b", MASTER_SAE, SLAVE_SAE, "sae-stranger"])
    pairs = [SaePair(master=MASTER_SAE, slave=SLAVE_SAE)]
    a = KmeConfig(
        kme_id="kme-a",
        peer_kme_id="kme-b",
        site_index=0,
        store=out / "kme-a.sqlite",
        cert=pki["kme-a"].cert,
        key=pki["kme-a"].key,
        local_saes=[MASTER_SAE],
        ca_cert=pki.ca_cert,
        pairs=pairs,
        port=0,
    )
    b = KmeConfig(
        kme_id="kme-b",
        peer_kme_id="kme-a",
        site_index=1,
        store=out / "kme-b.sqlite",
        cert=pki["kme-b"].cert,
        key=pki["kme-b"].key,
        local_saes=[SLAVE_SAE],
        ca_cert=pki.ca_cert,
        pairs=pairs,
        port=0,
    )
    return a, b, pki


def sae_ssl_context(pki: TestPki, sae: str) -> ssl.SSLContext:
    """A client TLS context that trusts the test CA and presents ``sae``'s certificate."""
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki[sae].cert), str(pki[sae].key))
    return ctx


class KmeThread:
    """Serve one KME from a daemon thread; ``with KmeThread(cfg) as kme: kme.url``."""

    def __init__(self, cfg: KmeConfig) -> None:
        self.cfg = cfg
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.server: KmeServer | None = None

    def __enter__(self) -> KmeThread:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(start_kme(self.cfg), self._loop)
        self.server = fut.result(timeout=60)
        return self

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT`` of the running KME."""
        assert self.server is not None
        return self.server.url

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


# -- kill -9 of a process writing into a key store -------------------------------------

FILL_BLOCK_BYTES = 4096
"""Size of the blocks the ``fill`` child adds."""
ISSUE_KEY_BYTES = 16
"""Size of the keys the ``issue`` child issues, one per request."""

_CHILD = (
    "import sys; from kms.testing import write_until_killed; "
    "write_until_killed(sys.argv[1], sys.argv[2], int(sys.argv[3]))"
)


def write_until_killed(path: str | Path, mode: str, start: int = 0) -> None:
    """The child of :func:`run_and_kill`: write into the store at ``path`` until killed.

    ``fill`` (the distillation): add random blocks of :data:`FILL_BLOCK_BYTES` with IDs
    ``start``, ``start + 1``, ... and print ``block <id> <sha256 hex>`` once ``add_block``
    returned. ``issue`` (key delivery): issue one key of :data:`ISSUE_KEY_BYTES` per
    request from :data:`MASTER_SAE` to :data:`SLAVE_SAE` and print ``key <key_ID> <hex>``
    once ``issue`` returned. Site 0; ends with the exception when the store is exhausted.
    """
    store = KeyStore(path, site_index=0)
    if mode == "fill":
        for block_id in itertools.count(start):
            key = os.urandom(FILL_BLOCK_BYTES)
            store.add_block(block_id, key)
            print("block", block_id, hashlib.sha256(key).hexdigest(), flush=True)
    elif mode == "issue":
        while True:
            for key_id, key in store.issue(MASTER_SAE, SLAVE_SAE, 1, ISSUE_KEY_BYTES):
                print("key", key_id, key.hex(), flush=True)
    else:
        raise ValueError(f"mode must be 'fill' or 'issue', not {mode!r}")


def run_and_kill(
    path: str | Path,
    mode: str,
    lines_wanted: int,
    *,
    start: int = 0,
    kill_after_s: float = 0.0,
    timeout_s: float = 120.0,
) -> list[list[str]]:
    """Run :func:`write_until_killed` in a child process, SIGKILL it, return what it printed.

    The child is killed ``kill_after_s`` after its ``lines_wanted``-th line (it goes on
    writing meanwhile, so the kill lands at an arbitrary point of a write). Returned: every
    complete line the child printed, split into words, i.e. every write it saw confirmed
    (at least ``lines_wanted``). :class:`RuntimeError` if the child ended or stalled first.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), mode, str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    seen: list[list[str]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(seen) < lines_wanted and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line.endswith("\n"):
                break
            seen.append(line.split())
        if len(seen) == lines_wanted and kill_after_s > 0:
            time.sleep(kill_after_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        # What the child printed between the last line read and the kill is confirmed too;
        # a line cut short by the kill is not counted.
        seen += [
            line.split()
            for line in proc.stdout.read().splitlines(keepends=True)
            if line.endswith("\n")
        ]
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    if len(seen) < lines_wanted:
        tail = err.strip().splitlines()[-1:] or ["no error output"]
        raise RuntimeError(
            f"the {mode} child confirmed {len(seen)} of {lines_wanted} writes "
            f"before it ended or stalled: {tail[0]}"
        )
    return seen


def _reopen(path: Path) -> tuple[bool, dict[int, str], set[str]]:
    """Open the store as a restarted KME would; (healthy, block digests, issued key IDs).

    Healthy: :class:`KeyStore` opens and reads, and SQLite's ``integrity_check`` says ok.
    """
    try:
        store = KeyStore(path, site_index=0)
        try:
            store.stats()
        finally:
            store.close()
        db = sqlite3.connect(path)
        try:
            ok = db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            digests = {
                int(b): bytes(d).hex() for b, d in db.execute("SELECT block_id, digest FROM blocks")
            }
            issued = {str(r[0]) for r in db.execute("SELECT key_id FROM issued")}
        finally:
            db.close()
    except (KmsError, sqlite3.Error):
        return False, {}, set()
    return ok, digests, issued


def _top_up(path: Path, blocks: dict[int, str], keys_wanted: int) -> None:
    """Add site-0 (even) blocks until ``keys_wanted`` keys can be issued at ``path``."""
    store = KeyStore(path, site_index=0)
    try:
        next_id = max(blocks, default=-1) + 1
        while store.issuable_bytes(ISSUE_KEY_BYTES) < keys_wanted * ISSUE_KEY_BYTES:
            next_id += next_id % 2
            store.add_block(next_id, os.urandom(1 << 16))
            next_id += 1
    finally:
        store.close()


def store_kill_scenario(
    directory: str | Path,
    kills_per_mode: int = 20,
    *,
    max_lines: int = 60,
    max_kill_delay_s: float = 0.02,
    budget_s: float = 60.0,
    seed: int = 1,
) -> dict[str, object]:
    """SIGKILL a process writing into a key store, reopen, count; ``kills_per_mode`` times each.

    Alternately a ``fill`` child (the distillation adding blocks) and an ``issue`` child
    (keys handed to a master SAE) is started on its own store in ``directory`` (the same
    store each time, so every kill lands on what the previous ones left) and killed after
    1..``max_lines`` confirmed writes plus 0..``max_kill_delay_s``. After every kill the
    store is reopened and checked. No new kill starts after ``budget_s``.

    Figures: kills per mode; confirmed blocks and those lost (missing or other bytes);
    keys delivered (confirmed to the SAE) and delivered twice (a key ID printed again, or
    a byte range overlapping another's), confirmed keys the store does not mark as used;
    stores that did not reopen cleanly; what kills cost (committed but never confirmed:
    blocks the distillation would send again, keys burnt); ``ok`` if nothing was lost,
    delivered twice or unmarked and every reopen was clean.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"fill": out / "fill.sqlite", "issue": out / "issue.sqlite"}
    rng = random.Random(seed)
    kills = {"fill": 0, "issue": 0}
    confirmed_blocks: dict[int, str] = {}
    keys: list[str] = []
    lost: set[int] = set()
    unmarked: set[str] = set()
    unclean = 0
    stored: dict[str, dict[int, str]] = {"fill": {}, "issue": {}}  # block ID -> digest
    issued: set[str] = set()
    t0 = time.monotonic()
    for _ in range(kills_per_mode):
        if time.monotonic() - t0 > budget_s or unclean:
            break
        for mode in ("fill", "issue"):
            path = paths[mode]
            if mode == "issue":
                _top_up(path, stored[mode], 8 * max_lines + 1000)
            lines = run_and_kill(
                path,
                mode,
                rng.randint(1, max_lines),
                start=max(stored[mode], default=-1) + 1,
                kill_after_s=rng.uniform(0.0, max_kill_delay_s),
            )
            kills[mode] += 1
            for kind, ident, value in lines:
                if kind == "block":
                    confirmed_blocks[int(ident)] = value
                else:
                    keys.append(ident)
            healthy, blocks, used = _reopen(path)
            if not healthy:
                unclean += 1
                break
            stored[mode] = blocks
            if mode == "fill":
                lost |= {b for b, d in confirmed_blocks.items() if blocks.get(b) != d}
            else:
                issued = used
                unmarked |= set(keys) - issued
    distinct = set(keys)
    ranges = sorted({parse_key_id(k)[0] for k in distinct}, key=lambda r: (r.block_id, r.offset))
    overlapping = sum(
        1
        for a, b in itertools.pairwise(ranges)
        if a.block_id == b.block_id and b.offset < a.offset + a.size
    )
    # A key ID printed again, or another ID for the same bytes, or bytes shared in part.
    twice = len(keys) - len(ranges) + overlapping
    return {
        "kills_during_distillation": kills["fill"],
        "kills_during_delivery": kills["issue"],
        "confirmed_blocks": len(confirmed_blocks),
        "confirmed_blocks_lost": len(lost),
        "blocks_committed_unconfirmed": len(set(stored["fill"]) - set(confirmed_blocks)),
        "keys_delivered": len(keys),
        "keys_delivered_twice": twice,
        "keys_delivered_not_marked_used": len(unmarked),
        "keys_used_unconfirmed": len(issued - distinct),
        "unclean_reopens": unclean,
        "duration_s": round(time.monotonic() - t0, 1),
        "ok": not lost and twice == 0 and not unmarked and unclean == 0,
    }
