"""CURVE key pairs in files: generate, load, pin.

Each node has one key pair: ``NAME.key`` holds the public key (give it to the
peer, who pins it) and ``NAME.key_secret`` the public and secret key (mode
0600, refused when group or others may read it). Both are ZPL text in the
layout of pyzmq's ``zmq.auth.create_certificates``, so zmq tools read them
too. Keys are Z85 text (ZeroMQ RFC 32) of Curve25519 keys (CurveZMQ, ZeroMQ
RFC 26). Secret keys never appear in ``repr``, messages or logs.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from ._errors import KeyFileError

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
_NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KEY_RE = re.compile(r'^\s*(public|secret)-key\s*=\s*"([^"]*)"\s*$')
_Z85_RE = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")


@dataclass(frozen=True)
class KeyPair:
    """A node's CURVE key pair (Z85 bytes); the secret key is hidden from ``repr``."""

    public: bytes
    secret: bytes = field(repr=False)


def _check_node(node: str) -> None:
    if not _NODE_RE.match(node):
        raise KeyFileError(
            f"node name {node!r} must be 1-64 characters of letters, digits, '_', '.', '-'"
        )


def key_paths(node: str, directory: Path) -> tuple[Path, Path]:
    """The public and secret key file of ``node`` in ``directory``."""
    _check_node(node)
    return directory / f"{node}{PUBLIC_SUFFIX}", directory / f"{node}{SECRET_SUFFIX}"


def _zpl(node: str, public: bytes, secret: bytes | None) -> str:
    lines = [
        f"#   qnet CURVE {'key pair' if secret else 'public key'} of node {node}",
        "#   ZeroMQ CURVE (RFC 26) key, Z85 text (RFC 32)",
        "metadata",
        f'    node = "{node}"',
        "curve",
        f'    public-key = "{public.decode()}"',
    ]
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def generate_keys(node: str, directory: Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Create ``node``'s key pair in ``directory``; returns (public file, secret file).

    The secret file is created with mode 0600 (never world- or group-readable,
    not even for a moment); existing files are kept unless ``overwrite``.
    """
    public_path, secret_path = key_paths(node, directory)
    directory.mkdir(parents=True, exist_ok=True)
    for p in (public_path, secret_path):
        if p.exists() and not overwrite:
            raise KeyFileError(f"{p} exists; refusing to replace a key (use overwrite)")
    public, secret = zmq.curve_keypair()
    if overwrite and secret_path.exists():
        secret_path.unlink()
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(_zpl(node, public, secret))
    public_path.write_text(_zpl(node, public, None))
    return public_path, secret_path


def _read_keys(path: Path) -> dict[str, bytes]:
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"key file {path} cannot be read: {type(e).__name__}") from None
    keys: dict[str, bytes] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _KEY_RE.match(line)
        if not m:
            continue
        if not _Z85_RE.match(m.group(2)):
            # never echo the value: it may be a secret key
            raise KeyFileError(f"{path} line {lineno}: {m.group(1)}-key is not 40 Z85 characters")
        keys[m.group(1)] = m.group(2).encode()
    return keys


def load_public_key(path: Path) -> bytes:
    """The Z85 public key in ``path`` (a ``.key`` or ``.key_secret`` file) to pin."""
    keys = _read_keys(Path(path))
    if "public" not in keys:
        raise KeyFileError(f"{path} holds no public-key")
    return keys["public"]


def load_key_pair(path: Path) -> KeyPair:
    """Load this node's key pair from its ``.key_secret`` file (mode 0600 or 0400 only)."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise KeyFileError(f"secret key file {path} does not exist") from None
    if mode & 0o077:
        raise KeyFileError(
            f"secret key file {path} has mode {mode:04o}: group or others may read it "
            "(chmod 600 it)"
        )
    keys = _read_keys(path)
    if "secret" not in keys or "public" not in keys:
        raise KeyFileError(f"{path} must hold public-key and secret-key")
    if zmq.curve_public(keys["secret"]) != keys["public"]:
        raise KeyFileError(f"{path}: the public-key does not belong to the secret-key")
    return KeyPair(keys["public"], keys["secret"])
