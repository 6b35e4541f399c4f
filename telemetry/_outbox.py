"""Durable FIFO queues on SQLite in WAL mode: the publisher's outbox and the bridge's spool.

Both keep rows in insertion order under an integer key, survive a process kill (every
append is one committed transaction, ``synchronous=FULL``) and are bounded:

* ``Outbox`` (publisher): one row per record, keyed by the record's ``seq``. Every record is
  written here *first* and deleted only after the broker acknowledged it (PUBACK), so nothing is
  lost while the broker is unreachable or across a publisher restart. When full, the policy is
  ``drop_oldest`` (delete the oldest rows, count them, log a warning) or ``refuse_newest``
  (raise ``OutboxFull``; what is stored stays).
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

    def _meta(self, key: str) -> int:
        return int(self._con.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

    @property
    def dropped(self) -> int:
        """Records deleted by the ``drop_oldest`` policy since the outbox was created."""
        with self._lock:
            return self._meta("dropped")

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
                        "DELETE FROM outbox WHERE seq IN "
                        "(SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                        (overflow,),
                    ).rowcount
                    con.execute("UPDATE meta SET value=value+? WHERE key='dropped'", (dropped,))
            self._count += n - dropped
        if dropped:
            log.warning(
                "outbox %s full (%d records): dropped the %d oldest (policy drop_oldest)",
                self.path,
                self.max_records,
                dropped,
            )
        return seqs

    def peek(self, limit: int) -> list[tuple[int, str, str]]:
        """The oldest ``limit`` rows as ``(seq, topic, line)``, in order."""
        with self._lock:
            return self._con.execute(
                "SELECT seq, topic, line FROM outbox ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()

    def remove(self, seqs: Sequence[int]) -> None:
        """Delete acknowledged rows."""
        if not seqs:
            return
        with self._lock:
            with _transaction(self._con) as con:
                cur = con.executemany("DELETE FROM outbox WHERE seq=?", [(s,) for s in seqs])
            self._count -= cur.rowcount

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
