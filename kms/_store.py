"""The persistent key store of one site: identical blocks at both ends, each key handed out once.

SQLite in WAL mode with ``synchronous=FULL``: a block whose :meth:`KeyStore.add_block`
returned, and a key whose issue or delivery returned, survive SIGKILL and power loss.
Every state change is one ``BEGIN IMMEDIATE`` transaction, so a crash leaves either all
of a request or none of it, and a key range is never handed out twice.

Who issues from which block: site 0 issues (``enc_keys``) from even block IDs, site 1
from odd ones, so the two KMEs never hand the same bytes to two master SAEs without
talking to each other. The other site resolves the key IDs (``dec_keys``) from its
identical copy of the block (see :mod:`kms._keyid`).

A key is erased at a site in the transaction that hands it out there (issued to the
master SAE, delivered to the slave SAE): its bytes in the block are overwritten with
zeros in place, so a stolen store holds only keys not yet handed out. Older copies of
the page remain in the main file until the next checkpoint, in stale WAL frames until
they are overwritten or the WAL is truncated (:meth:`KeyStore.close` does), and in the
disk's free blocks: keep the store on an encrypted volume.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kms._errors import KeyExhaustedError, KeyRequestError, KeyStoreError, KmsError
from kms._keyid import (
    ID_KEY_BYTES,
    MAX_BLOCK_BYTES,
    MAX_BLOCK_ID,
    MAX_KEY_BYTES,
    KeyRange,
    check_key_id,
    make_key_id,
    parse_key_id,
)

KeyOp = Callable[[sqlite3.Connection], list[tuple[str, bytes]]]
"""One request's work inside a store transaction: the (key_ID, key) pairs it hands out."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    block_id INTEGER PRIMARY KEY,
    digest BLOB NOT NULL,
    id_key BLOB NOT NULL,
    n_bytes INTEGER NOT NULL,
    added_s REAL NOT NULL,
    key BLOB NOT NULL  -- last: reading the other columns never walks its overflow pages
);
-- Mutable state apart from the immutable key bytes, so an update never rewrites a block.
CREATE TABLE IF NOT EXISTS cursors (
    block_id INTEGER PRIMARY KEY,
    next_offset INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS issued (
    key_id TEXT PRIMARY KEY,
    block_id INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    size INTEGER NOT NULL,
    master_sae TEXT NOT NULL,
    slave_sae TEXT NOT NULL,
    at_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS delivered (
    key_id TEXT PRIMARY KEY,
    block_id INTEGER NOT NULL,
    size INTEGER NOT NULL,
    master_sae TEXT NOT NULL,
    slave_sae TEXT NOT NULL,
    at_s REAL NOT NULL
);
"""


@dataclass(frozen=True)
class StoreStats:
    """What a store holds, for telemetry and ``/status``.

    Attributes:
        blocks: key blocks stored.
        stored_bytes: key bytes in all blocks (both directions, incl. ID keys).
        issuable_bytes: bytes this site can still hand to master SAEs.
        issued_keys: keys handed to master SAEs here (``enc_keys``).
        issued_bytes: their total size.
        delivered_keys: keys handed to slave SAEs here (``dec_keys``).
        delivered_bytes: their total size.
    """

    blocks: int
    stored_bytes: int
    issuable_bytes: int
    issued_keys: int
    issued_bytes: int
    delivered_keys: int
    delivered_bytes: int


class KeyStore:
    """One site's key store (thread-safe; one SQLite connection guarded by a lock)."""

    def __init__(self, path: str | Path, *, site_index: int) -> None:
        if site_index not in (0, 1):
            raise ValueError(f"site_index must be 0 or 1, not {site_index!r}")
        self.path = Path(path)
        self.site_index = site_index
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise KeyStoreError(f"key store {self.path}: {exc}") from exc
        if os.name == "posix":
            for suffix in ("", "-wal", "-shm"):
                p = Path(f"{self.path}{suffix}")
                if p.exists():
                    p.chmod(0o600)

    # ------------------------------------------------------------------ writing
    def _transaction(self) -> _Txn:
        return _Txn(self)

    def add_block(self, block_id: int, key: bytes) -> bool:
        """Store a distilled block; True if new, False if the same block was already stored.

        Idempotent, so the distillation can re-send a block after a crash; a different
        block under a stored ID is refused (the two sites disagree: never deliver).
        """
        if not 0 <= block_id <= MAX_BLOCK_ID:
            raise KeyRequestError(f"block_id {block_id} outside 0..{MAX_BLOCK_ID}")
        if not ID_KEY_BYTES < len(key) <= MAX_BLOCK_BYTES:
            raise KeyRequestError(
                f"block {block_id}: {len(key)} bytes, must be {ID_KEY_BYTES + 1}..{MAX_BLOCK_BYTES}"
            )
        digest = hashlib.sha256(key).digest()
        with self._transaction() as db:
            row = db.execute("SELECT digest FROM blocks WHERE block_id=?", (block_id,)).fetchone()
            if row is not None:
                if hmac.compare_digest(row[0], digest):
                    return False
                raise KeyStoreError(f"block {block_id} is stored already with other key bytes")
            db.execute(
                "INSERT INTO blocks VALUES (?,?,?,?,?,?)",
                (block_id, digest, key[:ID_KEY_BYTES], len(key), time.time(), bytes(key)),
            )
            db.execute("INSERT INTO cursors VALUES (?,?)", (block_id, ID_KEY_BYTES))
        return True

    def issue(
        self, master_sae: str, slave_sae: str, number: int, size_bytes: int
    ) -> list[tuple[str, bytes]]:
        """Hand ``number`` fresh keys of ``size_bytes`` to the master SAE, all or none."""
        return _one(self.batch([self.issue_op(master_sae, slave_sae, number, size_bytes)]))

    def deliver(
        self, master_sae: str, slave_sae: str, key_ids: list[str]
    ) -> list[tuple[str, bytes]]:
        """The keys the master SAE was given under ``key_ids``, each to the slave SAE once."""
        return _one(self.batch([self.deliver_op(master_sae, slave_sae, key_ids)]))

    def batch(self, ops: Sequence[KeyOp]) -> list[list[tuple[str, bytes]] | KmsError]:
        """Run ``ops`` in one transaction (one disk sync), each all-or-none on its own.

        The KME gathers the requests that arrive while a commit is under way into one
        batch (group commit), so the rate is not capped by one fsync per request. A
        request that fails (exhausted, unknown ID) leaves no trace and does not disturb
        the others; a failed commit fails every request of the batch.
        """
        results: list[list[tuple[str, bytes]] | KmsError] = []
        with self._transaction() as db:
            for op in ops:
                db.execute("SAVEPOINT op")
                try:
                    results.append(op(db))
                except KmsError as exc:
                    db.execute("ROLLBACK TO op")
                    results.append(exc)
                db.execute("RELEASE op")
        return results

    def issue_op(self, master_sae: str, slave_sae: str, number: int, size_bytes: int) -> KeyOp:
        """The operation of :meth:`issue`, for :meth:`batch`."""
        if not 0 < size_bytes <= MAX_KEY_BYTES:
            raise KeyRequestError(f"size {size_bytes * 8} bits outside 8..{MAX_KEY_BYTES * 8}")
        return lambda db: self._issue(db, master_sae, slave_sae, number, size_bytes)

    def deliver_op(self, master_sae: str, slave_sae: str, key_ids: list[str]) -> KeyOp:
        """The operation of :meth:`deliver`, for :meth:`batch`."""
        if len(set(key_ids)) != len(key_ids):
            raise KeyRequestError("the same key_ID appears twice in one request")
        return lambda db: self._deliver(db, master_sae, slave_sae, list(key_ids))

    def _issue(
        self, db: sqlite3.Connection, master_sae: str, slave_sae: str, number: int, size_bytes: int
    ) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        now = time.time()
        rows = db.execute(
            "SELECT b.block_id, b.id_key, c.next_offset, b.n_bytes "
            "FROM blocks b JOIN cursors c USING (block_id) "
            "WHERE b.block_id % 2 = ? AND b.n_bytes - c.next_offset >= ? ORDER BY b.block_id",
            (self.site_index, size_bytes),
        ).fetchall()
        for block_id, id_key, offset, n_bytes in rows:
            take = min(number - len(out), (n_bytes - offset) // size_bytes)
            chunk = _take(db, block_id, offset, take * size_bytes)
            for i in range(take):
                rng = KeyRange(block_id, offset, size_bytes)
                key_id = make_key_id(id_key, rng, master_sae, slave_sae)
                out.append((key_id, chunk[i * size_bytes : (i + 1) * size_bytes]))
                db.execute(
                    "INSERT INTO issued VALUES (?,?,?,?,?,?,?)",
                    (key_id, block_id, offset, size_bytes, master_sae, slave_sae, now),
                )
                offset += size_bytes
            db.execute("UPDATE cursors SET next_offset=? WHERE block_id=?", (offset, block_id))
            if len(out) == number:
                break
        if len(out) < number:
            raise KeyExhaustedError(
                f"{number} keys of {size_bytes * 8} bits asked, {len(out)} available now"
            )
        return out

    def _deliver(
        self, db: sqlite3.Connection, master_sae: str, slave_sae: str, key_ids: list[str]
    ) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        now = time.time()
        for key_id in key_ids:
            claimed, _ = parse_key_id(key_id)
            row = db.execute(
                "SELECT id_key, n_bytes FROM blocks WHERE block_id=?", (claimed.block_id,)
            ).fetchone()
            if row is None:
                raise _unknown(key_id, master_sae)
            id_key, n_bytes = row
            rng = check_key_id(key_id, id_key, master_sae, slave_sae)
            if rng.offset < ID_KEY_BYTES or rng.offset + rng.size > n_bytes:
                raise _unknown(key_id, master_sae)
            if rng.block_id % 2 == self.site_index:  # issued here, so erased here
                raise KeyRequestError(
                    f"key_ID {key_id} was issued by this KME to master SAE {master_sae!r}; "
                    "its slave SAE fetches it with dec_keys at the peer site's KME"
                )
            if db.execute("SELECT 1 FROM delivered WHERE key_id=?", (key_id,)).fetchone():
                raise KeyRequestError(f"key_ID {key_id} was delivered already")
            db.execute(
                "INSERT INTO delivered VALUES (?,?,?,?,?,?)",
                (key_id, rng.block_id, rng.size, master_sae, slave_sae, now),
            )
            out.append((key_id, _take(db, rng.block_id, rng.offset, rng.size)))
        return out

    # ------------------------------------------------------------------ reading
    def issuable_bytes(self, size_bytes: int = 1) -> int:
        """Bytes this site can still issue in whole keys of ``size_bytes``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT b.n_bytes - c.next_offset FROM blocks b JOIN cursors c USING (block_id) "
                "WHERE b.block_id % 2 = ?",
                (self.site_index,),
            ).fetchall()
        return sum((r[0] // size_bytes) * size_bytes for r in rows if r[0] > 0)

    def stats(self) -> StoreStats:
        """Fill level and counts, for telemetry and ``/status``."""
        with self._lock:
            blocks, stored = self._db.execute(
                "SELECT count(*), coalesce(sum(n_bytes), 0) FROM blocks"
            ).fetchone()
            issued, issued_b = self._db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM issued"
            ).fetchone()
            deliv, deliv_b = self._db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM delivered"
            ).fetchone()
        return StoreStats(
            blocks=int(blocks),
            stored_bytes=int(stored),
            issuable_bytes=self.issuable_bytes(),
            issued_keys=int(issued),
            issued_bytes=int(issued_b),
            delivered_keys=int(deliv),
            delivered_bytes=int(deliv_b),
        )

    def close(self) -> None:
        """Close the database (idempotent), checkpointing the WAL so no erased key stays in it."""
        with self._lock:
            with contextlib.suppress(sqlite3.Error):  # closed already, or busy: best effort
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()


def _one(results: list[list[tuple[str, bytes]] | KmsError]) -> list[tuple[str, bytes]]:
    (result,) = results
    if isinstance(result, KmsError):
        raise result
    return result


def _unknown(key_id: str, master_sae: str) -> KeyRequestError:
    return KeyRequestError(f"key_ID {key_id} is unknown for master SAE {master_sae!r}")


def _take(db: sqlite3.Connection, block_id: int, offset: int, n: int) -> bytes:
    """``n`` bytes of a block from ``offset``, overwritten with zeros as they are read.

    In place (incremental blob I/O touches only those pages), inside the caller's
    transaction: a rolled-back request erases nothing.
    """
    with db.blobopen("blocks", "key", block_id) as blob:
        blob.seek(offset)
        key = blob.read(n)
        blob.seek(offset)
        blob.write(bytes(n))
    return key


class _Txn:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` under the store's lock; rollback on any error."""

    def __init__(self, store: KeyStore) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        self._store._lock.acquire()
        try:
            self._store._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._store._lock.release()
            raise KeyStoreError(f"key store {self._store.path}: {exc}") from exc
        return self._store._db

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        db = self._store._db
        try:
            if exc is None:
                try:
                    db.execute("COMMIT")
                except sqlite3.Error as err:
                    raise KeyStoreError(f"key store {self._store.path}: {err}") from err
            elif db.in_transaction:
                db.execute("ROLLBACK")
        finally:
            self._store._lock.release()
        if isinstance(exc, sqlite3.Error):
            raise KeyStoreError(f"key store {self._store.path}: {exc}") from exc
