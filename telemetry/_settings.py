"""Settings of the publisher and the bridge (pydantic); secrets come from env vars or files.

The models hold *where* a secret is (an environment variable name or a file path), never the
secret itself, so printing or logging a settings object cannot leak it. The node config embeds
the same models.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from configfile import ConfigFileError, load_mapping

from ._schema import NODE_NAME_PATTERN


class SettingsError(ValueError):
    """A settings file or a secret is missing or invalid; the message names which and where."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Secret(_Model):
    """Where a secret lives: an environment variable or a file (first line, stripped)."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Secret:
        if self.env is None and self.file is None:
            raise ValueError("a secret needs 'env' (variable name) or 'file' (path)")
        return self

    def read(self, what: str) -> str:
        """The secret's value; raises SettingsError naming the source (never the value)."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise SettingsError(f"{what}: environment variable {self.env} is not set")
            return value
        assert self.file is not None
        try:
            return self.file.read_text().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise SettingsError(f"{what}: cannot read secret file {self.file}: {exc}") from None


class TlsSettings(_Model):
    """TLS to the broker: CA bundle, optional client certificate and key (paths)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False

    def context(self) -> ssl.SSLContext:
        """An SSL context for these settings (verifying the server unless told not to).

        Raises SettingsError naming the setting and the file that cannot be used.
        """
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        except OSError as exc:  # ssl.SSLError is an OSError too
            raise SettingsError(f"tls.ca_file {self.ca_file}: {exc.strerror or exc}") from None
        if self.cert_file is not None:
            key = str(self.key_file) if self.key_file else None
            try:
                ctx.load_cert_chain(str(self.cert_file), key)
            except OSError as exc:
                raise SettingsError(
                    f"tls.cert_file {self.cert_file} / tls.key_file {self.key_file}: "
                    f"{exc.strerror or exc}"
                ) from None
        if self.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


class BrokerSettings(_Model):
    """MQTT broker connection: fixed client id, persistent session, optional auth and TLS."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str = Field(min_length=1, max_length=128)
    username: str | None = None
    password: Secret | None = None
    tls: TlsSettings | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    reconnect_min_s: float = Field(0.2, gt=0)
    reconnect_max_s: float = Field(10.0, gt=0)

    def password_value(self) -> str | None:
        """The broker password (read now from its env var or file), or None."""
        return None if self.password is None else self.password.read("broker password")


class InfluxSettings(_Model):
    """InfluxDB v2 write API target (InfluxDB 2.x/3.x, 1.8+ compat, VictoriaMetrics)."""

    url: str
    org: str = "qnet"
    bucket: str = "qnet"
    token: Secret | None = None
    batch_points: int = Field(5000, ge=1, le=1_000_000)
    flush_interval_s: float = Field(0.1, gt=0, le=60)
    timeout_s: float = Field(10.0, gt=0)
    retry_min_s: float = Field(0.2, gt=0)
    retry_max_s: float = Field(5.0, gt=0)

    def token_value(self) -> str:
        """The API token (read now), or an empty string for servers that need none."""
        return "" if self.token is None else self.token.read("influx token")


class OutboxSettings(_Model):
    """The publisher's durable outbox: SQLite (WAL) file, size bound and what happens when full.

    ``drop_oldest``: the oldest records are deleted to make room, counted and logged.
    ``refuse_newest``: new records are refused (``OutboxFull`` raised), nothing stored is lost.
    """

    path: Path
    max_records: int = Field(1_000_000, ge=10)
    policy: Literal["drop_oldest", "refuse_newest"] = "drop_oldest"


class PublisherSettings(_Model):
    """Everything the publisher needs: node name, broker, outbox, message sizing."""

    node: str = Field(pattern=NODE_NAME_PATTERN)
    broker: BrokerSettings
    outbox: OutboxSettings
    max_lines_per_message: int = Field(500, ge=1, le=100_000)
    max_message_bytes: int = Field(256 * 1024, ge=1024)
    inflight: int = Field(20, ge=1, le=1000)


class SpoolSettings(_Model):
    """The bridge's durable spool (SQLite WAL): accepted messages wait here for the database.

    When the spool holds ``max_messages`` the bridge stops acknowledging (backpressure: the
    broker keeps the rest in the persistent session).
    """

    path: Path
    max_messages: int = Field(200_000, ge=10)


class BridgeSettings(_Model):
    """``qnet bridge CONFIG``: broker, Influx target, spool, topics, payload limits."""

    broker: BrokerSettings
    influx: InfluxSettings
    spool: SpoolSettings
    topics: tuple[str, ...] = ("qnet/v1/+/telemetry/#",)
    nodes: tuple[str, ...] | None = Field(
        None, description="the nodes whose telemetry is written; others are ignored (None: all)"
    )
    max_payload_bytes: int = Field(1024 * 1024, ge=64)
    queue_messages: int = Field(2000, ge=1)


def load_yaml(path: Path) -> dict[str, object]:
    """Read a YAML mapping with the one qnet loader (duplicate keys refused).

    SettingsError names the file, the line and what was wrong.
    """
    try:
        return load_mapping(path, "settings file").data
    except ConfigFileError as exc:
        raise SettingsError(str(exc)) from None


def load_bridge_settings(path: Path) -> BridgeSettings:
    """Load ``BridgeSettings`` from YAML (a ``bridge:`` section or the top level)."""
    data = load_yaml(path)
    section = data.get("bridge", data)
    try:
        return BridgeSettings.model_validate(section)
    except ValidationError as exc:
        prefix = "bridge." if "bridge" in data else ""
        raise SettingsError(format_validation_errors(path, exc, prefix)) from None


#: Keys whose values are secrets: never echoed in an error message.
SECRET_KEYS = frozenset({"password", "token", "secret"})


def format_validation_errors(path: Path, exc: ValidationError, prefix: str = "") -> str:
    """One line per pydantic error: file, key path, what was expected and what was found.

    ``prefix`` (e.g. ``"hil."``) is put before each key path, for a validated sub-section.
    What was found is left out for a secret (a key path through ``password``, ``token`` or
    ``secret``, or a ``Secret`` setting) and secrets inside it are masked, so that a secret
    written into the config by mistake does not end up in logs.
    """
    lines = []
    for err in exc.errors():
        key = prefix + ".".join(str(p) for p in err["loc"]) or "<top level>"
        got = error_input(err)
        lines.append(f"{path}: {key}: {err['msg']}{f' (got {got})' if got else ''}")
    return "\n".join(lines)


def error_input(err: Any, max_chars: int = 200) -> str:
    """What a pydantic error found, for a message: empty for a missing value or a secret.

    Secrets inside the value are masked (see :func:`format_validation_errors`).
    """
    if err["type"] == "missing" or _is_secret(err):
        return ""
    got = repr(_masked(err["input"]))
    return got if len(got) <= max_chars else got[:max_chars] + "..."


def _is_secret(err: Any) -> bool:
    """Whether a pydantic error is about a secret (its input must not be shown)."""
    if any(isinstance(p, str) and p.lower() in SECRET_KEYS for p in err["loc"]):
        return True
    return (err.get("ctx") or {}).get("class_name") == "Secret"


def _masked(value: Any) -> Any:
    """``value`` with whatever sits under a secret key (at any depth) replaced by ``***``."""
    if isinstance(value, dict):
        return {
            k: "***" if isinstance(k, str) and k.lower() in SECRET_KEYS else _masked(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_masked(v) for v in value)
    return value
