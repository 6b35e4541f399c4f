"""A KME's configuration: who it is, where its store is, its TLS files and which SAEs it serves."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SaePair(BaseModel):
    """A master SAE that asks for keys (``enc_keys``) and the slave SAE that gets the same keys."""

    model_config = ConfigDict(extra="forbid")

    master: str = Field(min_length=1, max_length=128)
    slave: str = Field(min_length=1, max_length=128)


class KmeConfig(BaseModel):
    """One site's KME (ETSI GS QKD 014 V1.1.1). Sizes are in bits, as in the standard."""

    model_config = ConfigDict(extra="forbid")

    kme_id: str = Field(min_length=1, max_length=128)
    peer_kme_id: str = Field(min_length=1, max_length=128)
    site_index: Literal[0, 1]
    """0 issues keys from even block IDs, 1 from odd ones (the two sites must differ)."""
    store: Path
    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)
    ca_cert: Path
    cert: Path
    key: Path
    local_saes: list[str]
    """SAEs attached to this KME (their certificate's common name is their SAE ID)."""
    pairs: list[SaePair]
    key_size_bits: int = Field(default=256, ge=8)
    min_key_size_bits: int = Field(default=64, ge=8)
    max_key_size_bits: int = Field(default=4096, ge=8, le=(2**16 - 1) * 8)
    max_keys_per_request: int = Field(default=128, ge=1, le=10_000)
    max_key_count: int = Field(default=1_000_000, ge=1)
    max_body_bytes: int = Field(default=65_536, ge=256)

    @model_validator(mode="after")
    def _sizes(self) -> KmeConfig:
        for name in ("key_size_bits", "min_key_size_bits", "max_key_size_bits"):
            value = getattr(self, name)
            if value % 8:
                raise ValueError(f"{name} = {value} is not a multiple of 8")
        if not self.min_key_size_bits <= self.key_size_bits <= self.max_key_size_bits:
            raise ValueError(
                f"key_size_bits = {self.key_size_bits} outside min_key_size_bits.."
                f"max_key_size_bits ({self.min_key_size_bits}..{self.max_key_size_bits})"
            )
        if self.kme_id == self.peer_kme_id:
            raise ValueError(f"kme_id and peer_kme_id are both {self.kme_id!r}")
        return self

    def pair_as_master(self, caller: str, slave: str) -> SaePair | None:
        """The pair in which ``caller``, attached here, is the master of ``slave``."""
        if caller not in self.local_saes:
            return None
        return next((p for p in self.pairs if p.master == caller and p.slave == slave), None)

    def pair_as_slave(self, caller: str, master: str) -> SaePair | None:
        """The pair in which ``caller``, attached here, is the slave of ``master``."""
        if caller not in self.local_saes:
            return None
        return next((p for p in self.pairs if p.master == master and p.slave == caller), None)
