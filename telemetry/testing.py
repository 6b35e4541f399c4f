"""Helpers for tests and benchmarks of telemetry under storage faults (not used in production).

``small_filesystem`` mounts a tmpfs of a given size, so an outbox can really run out of
space (SQLite's own "database or disk is full"), and ``read_only_filesystem`` mounts one
read-only. Both need root (or CAP_SYS_ADMIN); without it they raise ``FilesystemUnavailable``
saying why, which a test turns into a skip. ``fill`` takes the free space of a mount and
gives it back when its file is deleted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


class FilesystemUnavailable(RuntimeError):
    """A test file system could not be mounted (not root, no mount command, ...)."""


def _mount(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise FilesystemUnavailable(f"cannot run mount: {exc}") from exc
    if done.returncode != 0:
        why = done.stderr.strip() or f"exit {done.returncode}"
        raise FilesystemUnavailable(f"mount -t tmpfs -o {options} {path} not permitted: {why}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10, check=False)


@contextlib.contextmanager
def small_filesystem(path: Path, size_bytes: int) -> Iterator[Path]:
    """A tmpfs of ``size_bytes`` mounted on ``path`` for the ``with`` block, then unmounted."""
    _mount(path, f"size={size_bytes},mode=0755")
    try:
        yield path
    finally:
        _umount(path)


@contextlib.contextmanager
def read_only_filesystem(path: Path) -> Iterator[Path]:
    """An empty read-only tmpfs on ``path`` for the ``with`` block (root cannot write it)."""
    _mount(path, "ro,size=65536")
    try:
        yield path
    finally:
        _umount(path)


def resize(path: Path, size_bytes: int) -> None:
    """Grow (or shrink) the tmpfs mounted on ``path`` ("the disk was enlarged")."""
    _mount(path, f"remount,size={size_bytes}")


def fill(path: Path, chunk_bytes: int = 4096) -> int:
    """Write ``path`` until the file system is full (ENOSPC); returns the bytes written."""
    written = 0
    block = b"\0" * chunk_bytes
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                n = f.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if chunk_bytes > 1:
                    chunk_bytes //= 2
                    block = block[:chunk_bytes]
                    continue
                break
            written += n or 0
        with contextlib.suppress(OSError):
            os.fsync(f.fileno())
    return written
