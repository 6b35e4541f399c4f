"""Durable FIFO queues on SQLite in WAL mode: the publisher's outbox and the bridge's spool.

Both keep rows in insertion order under an integer key, survive a process kill (every
append is one committed transaction, ``synchronous=FULL``) and are bounded:

* ``Outbox`` (publisher): one row per record, keyed by the record's ``seq``. Every record is
  written here *first* and deleted only after the broker acknowledged it (PUBACK), so nothing is
  lost while the broker is unreachable or across a publisher restart. When full, the policy is
  ``drop_oldest`` (delete the oldest rows, count them, log a warning) or ``refuse_newest``
  (raise ``OutboxFull``; what is stored stays). When the file cannot be opened, read or
  written (disk full, read-only, I/O error) its methods raise ``OutboxError`` carrying
  SQLite's own message ("database or disk is full"), and nothing stored is lost.
* ``Spool`` (bridge): one row per accepted MQTT message (validated line protocol). The bridge
  acknowledges a message to the broker only once it is committed here, and deletes rows only
  after the database confirmed the write. When full, ``append`` reports it and the bridge stops
  acknowledging (backpressure).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ._schema import Record, to_line, with_seq

log = logging.getLogger("qnet.telemetry.outbox")


class OutboxFull(RuntimeError):
    """The outbox is at its bound and its policy is ``refuse_newest``."""


class OutboxError(RuntimeError):
    """The outbox's file cannot be opened, read or written (disk full, read-only, I/O)."""


def _storage_error(path: Path, what: str, exc: sqlite3.Error) -> OutboxError:
    err = OutboxError(f"outbox {path}: cannot {what}: {exc}")
    err.__cause__ = exc
    return err


def _connect(path: Path) -> sqlite3.Connection:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA busy_timeout=5000")
    return con


@contextlib.contextmanager
def _transaction(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed on success, rolled back on any error.

    Without the rollback a failed write (disk full, I/O error) would leave the transaction
    open and every later write would fail until the process restarts.
    """
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
        con.execute("COMMIT")
    except BaseException:
        # SQLite may have rolled back already (SQLITE_FULL does): a failing ROLLBACK
        # ("no transaction is active") must not hide the real cause
        if con.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
        raise


class Outbox:
    """The publisher's durable, bounded, ordered record store (see module docstring)."""

    def __init__(
        self, path: Path, max_records: int = 1_000_000, policy: str = "drop_oldest"
    ) -> None:
        if policy not in ("drop_oldest", "refuse_newest"):
            raise ValueError(f"outbox policy must be drop_oldest or refuse_newest, not {policy!r}")
        self.path = Path(path)
        self.max_records = max_records
        self.policy = policy
        self._lock = threading.Lock()
        try:
            self._con = _connect(self.path)
            self._con.execute(
                "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, "
                "line TEXT NOT NULL)"
            )
            self._con.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"
            )
            self._con.execute("INSERT OR IGNORE INTO meta VALUES ('next_seq', 1), ('dropped', 0)")
            self._count = self._con.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(
                f"cannot open the outbox {self.path}: {exc} (the directory must be writable "
                "and have free space)"
            ) from exc

    def _meta(self, key: str) -> int:
        return int(self._con.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

    @property
    def dropped(self) -> int:
        """Records deleted by the ``drop_oldest`` policy since the outbox was created."""
        with self._lock:
            try:
                return self._meta("dropped")
            except sqlite3.Error as exc:
                raise _storage_error(self.path, "read", exc) from exc

    def __len__(self) -> int:
        """Records waiting for a broker acknowledgement."""
        return self._count

    def append(self, topic_records: Sequence[tuple[str, Record]]) -> list[int]:
        """Store records (each with its topic) in one transaction; return their ``seq`` numbers."""
        if not topic_records:
            return []
        with self._lock:
            n = len(topic_records)
            overflow = self._count + n - self.max_records
            if overflow > 0 and self.policy == "refuse_newest":
                raise OutboxFull(
                    f"outbox {self.path} holds {self._count} of {self.max_records} records; "
                    f"refusing {n} new (policy refuse_newest)"
                )
            try:
                seqs, dropped = self._append(topic_records, overflow)
            except sqlite3.Error as exc:
                raise _storage_error(self.path, "store records", exc) from exc
            self._count += n - dropped
        if dropped:
            log.warning(
                "outbox %s full (%d records): dropped the %d oldest (policy drop_oldest)",
                self.path,
                self.max_records,
                dropped,
            )
        return seqs

    def _append(
        self, topic_records: Sequence[tuple[str, Record]], overflow: int
    ) -> tuple[list[int], int]:
        """One transaction: the rows, the next ``seq`` and the ``drop_oldest`` deletions."""
        n = len(topic_records)
        with _transaction(self._con) as con:
            first = self._meta("next_seq")
            seqs = list(range(first, first + n))
            con.executemany(
                "INSERT INTO outbox VALUES (?, ?, ?)",
                [
                    (s, topic, to_line(with_seq(rec, s)))
                    for s, (topic, rec) in zip(seqs, topic_records, strict=True)
                ],
            )
            con.execute("UPDATE meta SET value=? WHERE key='next_seq'", (first + n,))
            dropped = 0
            if overflow > 0:
                dropped = con.execute(
                    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                    (overflow,),
                ).rowcount
                con.execute("UPDATE meta SET value=value+? WHERE key='dropped'", (dropped,))
        return seqs, dropped

    def peek(self, limit: int) -> list[tuple[int, str, str]]:
        """The oldest ``limit`` rows as ``(seq, topic, line)``, in order."""
        with self._lock:
            try:
                return self._con.execute(
                    "SELECT seq, topic, line FROM outbox ORDER BY seq LIMIT ?", (limit,)
                ).fetchall()
            except sqlite3.Error as exc:
                raise _storage_error(self.path, "read", exc) from exc

    def remove(self, seqs: Sequence[int]) -> None:
        """Delete acknowledged rows."""
        if not seqs:
            return
        with self._lock:
            try:
                with _transaction(self._con) as con:
                    cur = con.executemany("DELETE FROM outbox WHERE seq=?", [(s,) for s in seqs])
            except sqlite3.Error as exc:
                raise _storage_error(self.path, "delete sent records", exc) from exc
            self._count -= cur.rowcount

    def reopen(self) -> None:
        """Close and reopen the connection (a storage error may have left it unusable)."""
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._con.close()
            try:
                self._con = _connect(self.path)
                self._count = self._con.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            except (sqlite3.Error, OSError) as exc:
                raise OutboxError(f"outbox {self.path}: cannot reopen: {exc}") from exc

    def close(self) -> None:
        """Close the database (rows stay on disk)."""
        with self._lock:
            self._con.close()


class Spool:
    """The bridge's durable, bounded FIFO of accepted messages (payload = line protocol)."""

    def __init__(self, path: Path, max_messages: int = 200_000) -> None:
        self.path = Path(path)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._con = _connect(self.path)
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "npoints INTEGER NOT NULL, lines TEXT NOT NULL)"
        )
        self._count = self._con.execute("SELECT COUNT(*) FROM spool").fetchone()[0]

    def __len__(self) -> int:
        """Messages waiting to be written to the database."""
        return self._count

    def free(self) -> int:
        """How many more messages fit."""
        return max(0, self.max_messages - self._count)

    def append(self, items: Sequence[tuple[int, str]]) -> None:
        """Commit ``(npoints, lines)`` rows in one transaction (caller checks ``free()``)."""
        if not items:
            return
        with self._lock:
            with _transaction(self._con) as con:
                con.executemany("INSERT INTO spool (npoints, lines) VALUES (?, ?)", items)
            self._count += len(items)

    def peek(self, max_points: int) -> tuple[int, int, list[str]]:
        """Oldest rows up to ``max_points`` points (at least one row): ``(last_id, n, lines)``."""
        with self._lock:
            cur = self._con.execute("SELECT id, npoints, lines FROM spool ORDER BY id")
            last = 0
            total = 0
            out: list[str] = []
            for row_id, npoints, lines in cur:
                if out and total + npoints > max_points:
                    break
                last = row_id
                total += npoints
                out.append(lines)
            cur.close()
            return last, total, out

    def remove_through(self, last_id: int) -> None:
        """Delete every row up to and including ``last_id`` (written to the database)."""
        with self._lock:
            cur = self._con.execute("DELETE FROM spool WHERE id <= ?", (last_id,))
            self._count -= cur.rowcount

    def close(self) -> None:
        """Close the database (rows stay on disk)."""
        with self._lock:
            self._con.close()


#: Free space ``check_outbox_path`` asks for by default (a few minutes of a busy node).
MIN_FREE_BYTES = 16 * 1024 * 1024


def check_outbox_path(path: Path, min_free_bytes: int = MIN_FREE_BYTES) -> list[str]:
    """What would stop an outbox at ``path`` from storing records (empty when nothing does).

    Checked without changing anything but a probe file: the directory exists or can be
    created, a file can be created in it (a read-only mount or directory fails here),
    an existing outbox opens read-write, and the file system has ``min_free_bytes`` free.
    """
    import os
    import shutil
    import tempfile

    path = Path(path)
    problems: list[str] = []
    parent = path.parent
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return [f"outbox {path}: {existing} is not a directory"]
    probe_dir = parent if parent.exists() else existing
    try:
        with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".qnet-check-"):
            pass
    except OSError as exc:
        problems.append(
            f"outbox {path}: cannot create files in {probe_dir} ({exc.strerror or exc})"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        problems.append(f"outbox {path}: the file is not readable and writable")
    elif path.exists() and not problems:
        try:
            con = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
            try:
                con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            finally:
                con.close()
        except sqlite3.Error as exc:
            problems.append(f"outbox {path}: cannot open it as an SQLite database ({exc})")
    try:
        free = shutil.disk_usage(probe_dir).free
    except OSError as exc:
        problems.append(f"outbox {path}: cannot read the free space of {probe_dir} ({exc})")
    else:
        if free < min_free_bytes:
            problems.append(
                f"outbox {path}: only {free / 2**20:.2f} MiB free in {probe_dir} "
                f"(want at least {min_free_bytes / 2**20:.0f} MiB)"
            )
    return problems
