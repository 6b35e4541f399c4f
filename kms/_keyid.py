"""Key IDs that the peer KME can resolve without a round trip, and no SAE can forge.

Both sites hold identical key blocks (same IDs, same bytes) from distillation. A key
handed to a master SAE at one site is a byte range of one block; its ``key_ID`` (a UUID,
ETSI GS QKD 014 V1.1.1 §6.3) carries that range and a tag, so the other site's KME finds
the same bytes for the slave SAE. The tag is HMAC-SHA256 (RFC 2104) keyed with the
block's first :data:`ID_KEY_BYTES` bytes, which both sites hold and never deliver; it
binds the range to the SAE pair, so a slave SAE cannot make up IDs to read key material
that was never issued.

Layout of the 122 free bits of an RFC 9562 version-8 UUID:
``block_id`` 24 bits | ``offset`` 24 bits (bytes) | ``size`` 16 bits (bytes) | tag 58 bits.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass

from kms._errors import KeyRequestError

ID_KEY_BYTES = 32
"""Bytes at the start of every block reserved as its key-ID tag key (never delivered)."""
MAX_BLOCK_ID = (1 << 24) - 1
MAX_BLOCK_BYTES = 1 << 24
MAX_KEY_BYTES = (1 << 16) - 1
_TAG_BITS = 58


@dataclass(frozen=True)
class KeyRange:
    """Where one delivered key lives: ``size`` bytes of block ``block_id`` from ``offset``."""

    block_id: int
    offset: int
    size: int


def _tag(id_key: bytes, rng: KeyRange, master_sae: str, slave_sae: str) -> int:
    msg = b"|".join(
        [
            b"qnet-kms-key-id-v1",
            rng.block_id.to_bytes(3, "big"),
            rng.offset.to_bytes(3, "big"),
            rng.size.to_bytes(2, "big"),
            master_sae.encode(),
            slave_sae.encode(),
        ]
    )
    digest = hmac.new(id_key, msg, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - _TAG_BITS)


def make_key_id(id_key: bytes, rng: KeyRange, master_sae: str, slave_sae: str) -> str:
    """The UUID string of ``rng`` for the pair (master, slave)."""
    if not (0 <= rng.block_id <= MAX_BLOCK_ID and 0 <= rng.offset < MAX_BLOCK_BYTES):
        raise ValueError(f"key range {rng} outside the key-ID layout")
    if not 0 < rng.size <= MAX_KEY_BYTES:
        raise ValueError(f"key size {rng.size} bytes outside 1..{MAX_KEY_BYTES}")
    payload = (rng.block_id << 98) | (rng.offset << 74) | (rng.size << 58)
    payload |= _tag(id_key, rng, master_sae, slave_sae)
    # Spread the 122 payload bits around the version (4) and variant (2) bits.
    hi = payload >> 62  # 60 bits
    lo = payload & ((1 << 62) - 1)
    value = ((hi >> 12) << 80) | (0x8 << 76) | ((hi & 0xFFF) << 64) | (0b10 << 62) | lo
    return str(uuid.UUID(int=value))


def parse_key_id(key_id: str) -> tuple[KeyRange, int]:
    """The range and tag a key ID claims; :class:`KeyRequestError` if it is no qnet key ID."""
    try:
        value = uuid.UUID(key_id).int
    except (ValueError, AttributeError, TypeError):
        raise KeyRequestError(f"key_ID {str(key_id)[:64]!r} is not a UUID") from None
    if (value >> 76) & 0xF != 0x8 or (value >> 62) & 0b11 != 0b10:
        raise KeyRequestError(f"key_ID {key_id} was not issued by a qnet KME")
    hi = ((value >> 80) << 12) | ((value >> 64) & 0xFFF)
    payload = (hi << 62) | (value & ((1 << 62) - 1))
    rng = KeyRange(
        block_id=payload >> 98,
        offset=(payload >> 74) & 0xFFFFFF,
        size=(payload >> 58) & 0xFFFF,
    )
    return rng, payload & ((1 << _TAG_BITS) - 1)


def check_key_id(key_id: str, id_key: bytes, master_sae: str, slave_sae: str) -> KeyRange:
    """The range of ``key_id`` if its tag is right for this pair, else :class:`KeyRequestError`."""
    rng, tag = parse_key_id(key_id)
    if rng.size == 0 or not hmac.compare_digest(
        tag.to_bytes(8, "big"), _tag(id_key, rng, master_sae, slave_sae).to_bytes(8, "big")
    ):
        raise KeyRequestError(f"key_ID {key_id} is unknown for master SAE {master_sae!r}")
    return rng
