"""The command API: request schema, permissions, safe-limit validation and JSON replies.

A request is a JSON object::

    {"id": "42", "user": "op", "device": "pump_laser", "setting": "current_setpoint_a",
     "value": 0.05}                                        # set
    {"id": "43", "device": "pump_laser", "setting": "current_setpoint_a"}   # get
    {"id": "44", "device": "snspd_bias", "action": "reset_latch"}           # action
    {"id": "45", "device": "daemon", "action": "calibrate"}                 # daemon action

Everything is checked here, *before* any driver is touched: the JSON shape
(unknown keys refused), the device, the setting or action (only what the
device's surface lists), the value's type and the instrument's configured
safe range, and the user's role. :func:`validate_request` returns a
:class:`ValidRequest` or raises :class:`CommandError`, whose ``code`` and
message go into the error reply. Replies are JSON objects with the request's
``id``, ``ok`` and either ``result`` or ``error: {code, message}``.

Roles: ``viewer`` may read (get, readings, status), ``operator`` may also set
and run actions, ``admin`` everything. The interlock engine acts as
``system`` (operator rights).

Authentication is per message: a user with a configured secret signs every
request with HMAC-SHA256 (RFC 2104, FIPS 198-1) over its canonical form
(:func:`canonical_request`: node, user, id, device, setting, action, value,
timestamp and nonce), so a captured request can be neither altered nor
replayed. The secret itself never travels. :class:`Authenticator` checks the
signature, the freshness (``ts_ms`` within ``max_skew_s`` of the daemon's
clock) and the uniqueness of the nonce (remembered for the freshness window
only, so memory stays bounded), refusing with ``bad_signature``, ``stale`` or
``replayed``.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from telemetry import Secret

from ._json import jsonable

MAX_REQUEST_BYTES = 16 * 1024
#: Longest request id echoed in a reply (a longer one is cut, so a reply stays small).
MAX_ECHOED_ID = 128
#: Integer ids must fit in a signed 64-bit integer (any JSON parser can echo them exactly).
MAX_INT_ID = 2**63
#: Version tag at the head of the signed canonical form.
SIGNATURE_VERSION = "qnet-cmd-v1"
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_SIG = re.compile(r"^[0-9a-f]{64}$")
ROLES = ("none", "viewer", "operator", "admin")
Role = Literal["none", "viewer", "operator", "admin"]
DAEMON = "daemon"
#: Daemon actions and the role each needs.
DAEMON_ACTIONS: dict[str, str] = {
    "status": "viewer",
    "devices": "viewer",
    "interlocks": "viewer",
    "calibrate": "operator",
    "compensate": "operator",
    "pause_key": "operator",
    "resume_key": "operator",
}


class CommandError(Exception):
    """A request refused; ``code`` is machine-readable, the message says what and why."""

    def __init__(self, code: str, message: str, request_id: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


class Request(BaseModel):
    """The wire schema of one request (strict: no coercion, no unknown keys)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | int = Field(description="echoed in the reply")
    device: str = Field(min_length=1, max_length=64)
    setting: str | None = Field(None, min_length=1, max_length=64)
    action: str | None = Field(None, min_length=1, max_length=64)
    value: Any = None
    user: str | None = Field(None, min_length=1, max_length=64)
    token: str | None = Field(None, max_length=256)
    ts_ms: int | None = Field(None, ge=0, lt=2**53, description="Unix time of signing, ms")
    nonce: str | None = Field(None, min_length=1, max_length=64, description="never reused")
    sig: str | None = Field(None, min_length=1, max_length=128, description="HMAC-SHA256, hex")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str | int) -> str | int:
        if isinstance(v, bool):
            raise ValueError("id must be a string or an integer")
        if isinstance(v, str) and not 1 <= len(v) <= MAX_ECHOED_ID:
            raise ValueError(f"id must be 1-{MAX_ECHOED_ID} characters")
        if isinstance(v, int) and not -MAX_INT_ID <= v < MAX_INT_ID:
            raise ValueError("an integer id must fit in 64 bits; use a string id")
        return v


class UserConfig(BaseModel):
    """One operator: role and an optional secret (environment or file), the HMAC key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role = "viewer"
    token: Secret | None = None


class PermissionsConfig(BaseModel):
    """Who may do what: the role of requests without a user, and the known users."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_role: Role = "viewer"
    users: dict[str, UserConfig] = Field(default_factory=dict)

    def secret_problems(self) -> list[tuple[str, str]]:
        """(key path, why) for each user secret that cannot be read now (never the value).

        ``qnet run`` (and ``--check``) refuse to start on these: the user could never be
        authenticated, and the mistake would only show as refusals.
        """
        out = []
        for name, cfg in self.users.items():
            if cfg.token is None:
                continue
            try:
                value = cfg.token.read(f"secret of user {name}")
            except ValueError as exc:
                out.append((f"daemon.permissions.users.{name}.token", str(exc)))
                continue
            if not value:
                out.append((f"daemon.permissions.users.{name}.token", "the secret is empty"))
        return out

    def role_of(self, req: Request, now_s: float | None = None) -> str:
        """The role of a request's user, its signature checked (no replay memory).

        For one-off checks; the daemon keeps one :class:`Authenticator`, which also
        refuses a nonce seen before.
        """
        return Authenticator(self).role_of(req, now_s)


class CommandSettings(BaseModel):
    """How the command server guards the instruments (``daemon.commands`` in the config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_skew_s: float = Field(
        30.0, gt=0.0, le=600.0, description="signed ts_ms must be this close to our clock, s"
    )
    rate_per_user_hz: float = Field(
        20.0, gt=0.0, description="executed requests per second and user (token bucket rate)"
    )
    burst: int = Field(40, ge=1, description="token bucket depth: requests at once per user")
    device_queue: int = Field(
        16, ge=1, le=10_000, description="commands waiting per device; more are refused busy"
    )
    max_inflight: int = Field(64, ge=1, le=10_000, description="requests answered at once")
    max_reply_publishes: int = Field(
        8, ge=1, le=1000, description="replies awaiting the broker's PUBACK at once"
    )


def role_allows(role: str, needed: str) -> bool:
    """Whether ``role`` has at least the rights of ``needed`` (``system`` = operator)."""
    if role == "system":
        role = "operator"
    return ROLES.index(role) >= ROLES.index(needed)


# -- per-message authentication -----------------------------------------------------------


def canonical_request(node: str, body: Mapping[str, Any]) -> bytes:
    """The bytes a request's HMAC covers: every field that decides what it does, and when.

    A JSON array (compact, ASCII, fixed order) of the version tag, the node it is for, the
    user, id, device, setting, action, value, ``ts_ms`` and ``nonce``: changing any of them
    (or sending the request to another node) breaks the signature. A value survives the
    JSON round trip unchanged (floats print as their shortest exact repr), so signer and
    checker build the same bytes.
    """
    fields: list[Any] = [SIGNATURE_VERSION, node]
    fields += [body.get(k) for k in ("user", "id", "device", "setting", "action", "value")]
    fields += [body.get("ts_ms"), body.get("nonce")]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode()


def request_signature(node: str, body: Mapping[str, Any], secret: str) -> str:
    """HMAC-SHA256 (RFC 2104) of :func:`canonical_request` under the user's secret, hex."""
    return hmac.new(secret.encode(), canonical_request(node, body), hashlib.sha256).hexdigest()


def sign_request(
    node: str, body: Mapping[str, Any], secret: str, now_s: float | None = None
) -> dict[str, Any]:
    """``body`` with a fresh ``ts_ms`` and ``nonce`` and its ``sig`` (the secret is not sent)."""
    out = {k: v for k, v in body.items() if k not in ("token", "sig")}
    out["ts_ms"] = int((time.time() if now_s is None else now_s) * 1000)
    out["nonce"] = secrets.token_hex(16)
    out["sig"] = request_signature(node, out, secret)
    return out


class Authenticator:
    """The role of each request's user, checking signature, freshness and nonce uniqueness.

    Args:
        permissions: the users, their roles and secrets.
        node: the node this daemon runs (part of what is signed).
        max_skew_s: how far a request's ``ts_ms`` may be from this clock.
        max_nonces: cap on the nonces remembered for one user (beyond it that user's
            requests are refused ``busy`` until old ones expire), so one user flooding
            signed requests can neither exhaust memory nor lock the others out.
        secret_ttl_s: how long a secret read from its file or variable is reused.
    """

    def __init__(
        self,
        permissions: PermissionsConfig,
        node: str = "",
        *,
        max_skew_s: float = 30.0,
        max_nonces: int = 20_000,
        secret_ttl_s: float = 10.0,
    ) -> None:
        self.permissions = permissions
        self.node = node
        self.max_skew_s = max_skew_s
        self.max_nonces = max_nonces
        self.secret_ttl_s = secret_ttl_s
        self._seen: dict[tuple[str, str], int] = {}  # (user, nonce) -> expiry, ms
        self._per_user: dict[str, int] = {}
        self._expiry: list[tuple[int, str, str]] = []
        self._secrets: dict[str, tuple[float, str]] = {}

    def _secret(self, user: str, cfg: UserConfig) -> str:
        now = time.monotonic()
        hit = self._secrets.get(user)
        if hit is not None and now - hit[0] < self.secret_ttl_s:
            return hit[1]
        assert cfg.token is not None
        try:
            value = cfg.token.read(f"secret of user {user}")
        except ValueError as exc:  # SettingsError: names the source, never the value
            raise CommandError("not_configured", f"the daemon cannot read it: {exc}") from None
        self._secrets[user] = (now, value)
        return value

    def _forget_expired(self, now_ms: int) -> None:
        while self._expiry and self._expiry[0][0] < now_ms:
            _, user, nonce = heapq.heappop(self._expiry)
            if self._seen.pop((user, nonce), None) is not None:
                self._per_user[user] -= 1

    @property
    def remembered(self) -> int:
        """How many nonces are remembered now (bounded by the freshness window)."""
        return len(self._seen)

    def role_of(self, req: Request, now_s: float | None = None) -> str:
        """The role of ``req``'s user, or CommandError ``bad_signature``/``stale``/``replayed``."""
        signed = (req.ts_ms, req.nonce, req.sig) != (None, None, None)
        if req.token is not None:
            raise CommandError(
                "bad_signature",
                "requests carry an HMAC signature (ts_ms, nonce, sig), never the secret "
                "itself: a token in the request could be replayed by anyone who reads it",
            )
        if req.user is None:
            if signed:
                raise CommandError("bad_signature", "a signed request must name its user")
            return self.permissions.default_role
        cfg = self.permissions.users.get(req.user)
        if cfg is None:
            return "none"
        if cfg.token is None:
            return cfg.role  # a user without a secret: nothing to check (config's choice)
        if req.ts_ms is None or req.nonce is None or req.sig is None:
            raise CommandError(
                "bad_signature",
                f"user {req.user!r} must sign each request (ts_ms, nonce, sig: HMAC-SHA256 "
                "with the user's secret; `qnet` does it with --token-env)",
            )
        if not _NONCE.match(req.nonce) or not _SIG.match(req.sig):
            raise CommandError(
                "bad_signature",
                "nonce must be 16-64 characters [A-Za-z0-9_-] and sig 64 lowercase hex digits",
            )
        expected = request_signature(self.node, req.model_dump(), self._secret(req.user, cfg))
        if not hmac.compare_digest(expected, req.sig):
            raise CommandError(
                "bad_signature",
                f"the signature does not match the request for node {self.node!r} "
                "(altered in transit, or not signed with this user's secret)",
            )
        now_ms = int((time.time() if now_s is None else now_s) * 1000)
        skew_ms = int(self.max_skew_s * 1000)
        if abs(now_ms - req.ts_ms) > skew_ms:
            raise CommandError(
                "stale",
                f"signed {(now_ms - req.ts_ms) / 1000:+.1f} s from the daemon's clock; allowed "
                f"+-{self.max_skew_s:g} s (replayed, or a clock to fix)",
            )
        self._forget_expired(now_ms)
        key = (req.user, req.nonce)
        if key in self._seen:
            raise CommandError(
                "replayed", "this nonce was already used: a request is executed at most once"
            )
        if self._per_user.get(req.user, 0) >= self.max_nonces:
            raise CommandError(
                "busy", f"user {req.user!r} sent too many requests recently; retry shortly"
            )
        expiry = req.ts_ms + skew_ms  # after this, the freshness check refuses it anyway
        self._seen[key] = expiry
        self._per_user[req.user] = self._per_user.get(req.user, 0) + 1
        heapq.heappush(self._expiry, (expiry, req.user, req.nonce))
        return cfg.role


# -- device surfaces -----------------------------------------------------------------------


@dataclass(frozen=True)
class SettingSpec:
    """One settable quantity: its type, safe range and how to get/set it on a driver."""

    name: str
    kind: Literal["number", "bool"]
    limits: tuple[float, float] | None
    getter: Callable[[Any], Any]
    setter: Callable[[Any, Any], None]
    doc: str = ""


@dataclass(frozen=True)
class DeviceSurface:
    """What a command may touch on one instrument."""

    name: str
    model: str
    settings: dict[str, SettingSpec] = field(default_factory=dict)
    readables: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    actions: dict[str, Callable[[Any], Any]] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (``qnet devices`` over MQTT, ``--help`` texts)."""
        return {
            "model": self.model,
            "settings": {
                n: {"kind": s.kind, "limits": list(s.limits) if s.limits else None}
                for n, s in sorted(self.settings.items())
            },
            "readables": sorted(self.readables),
            "actions": sorted(self.actions),
        }


def _intersect(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return (max(a[0], b[0]), min(a[1], b[1]))


def surface_for(
    name: str, driver_cls: type, limits: Mapping[str, tuple[float, float]]
) -> DeviceSurface:
    """The command surface of a driver class with the instrument's effective safe limits.

    ``control`` descriptors become number settings (range from ``limits``),
    ``switch`` descriptors bool settings, ``measurement`` descriptors readables.
    Driver-specific extras: the Meadowlark D3050's ``element<k>_voltage_v``
    and the Keithley 2400's ``reset_latch`` / ``latched``.
    """
    from drivers import control, measurement, switch

    settings: dict[str, SettingSpec] = {}
    readables: dict[str, Callable[[Any], Any]] = {}
    actions: dict[str, Callable[[Any], Any]] = {"readings": lambda inst: inst.readings()}

    def _get(attr: str) -> Callable[[Any], Any]:
        return lambda inst: getattr(inst, attr)

    def _set(attr: str) -> Callable[[Any, Any], None]:
        return lambda inst, v: setattr(inst, attr, v)

    for klass in reversed(driver_cls.__mro__):
        for attr, desc in vars(klass).items():
            if isinstance(desc, switch):
                settings[attr] = SettingSpec(
                    attr, "bool", None, _get(attr), _set(attr), desc.__doc__ or ""
                )
            elif isinstance(desc, control):
                key = str(desc.limits_key or attr)
                lim = limits.get(key)
                if lim is None:
                    continue  # no safe range: not settable over the API
                settings[attr] = SettingSpec(
                    attr,
                    "number",
                    (float(lim[0]), float(lim[1])),
                    _get(attr),
                    _set(attr),
                    desc.__doc__ or "",
                )
            elif isinstance(desc, measurement):
                readables[attr] = _get(attr)
    model = str(getattr(driver_cls, "MODEL", driver_cls.__name__))
    if hasattr(driver_cls, "set_voltage") and hasattr(driver_cls, "N_ELEMENTS"):
        common = limits.get("element_voltage_v", (0.0, 10.0))
        for k in range(1, int(driver_cls.N_ELEMENTS) + 1):
            own = limits.get(f"element{k}_voltage_v", common)
            lim = _intersect(common, own)
            settings[f"element{k}_voltage_v"] = SettingSpec(
                f"element{k}_voltage_v",
                "number",
                lim,
                (lambda kk: lambda inst: inst.voltage(kk))(k),
                (lambda kk: lambda inst, v: inst.set_voltage(kk, v))(k),
                f"drive voltage of liquid-crystal element {k}, V",
            )
        readables["setpoints"] = lambda inst: inst.setpoints
    if hasattr(driver_cls, "reset_latch"):
        actions["reset_latch"] = lambda inst: inst.reset_latch()
        readables["latched"] = lambda inst: inst.latched()
    return DeviceSurface(name, model, settings, readables, actions)


def element_settings(surface: DeviceSurface) -> list[str]:
    """The settings compensation moves on ``surface`` (``element<k>...``), element 1 first."""
    names = [n for n in surface.settings if n.startswith("element")]
    return sorted(names, key=lambda n: (len(n), n))


# -- validation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidRequest:
    """A request that passed every check: safe to hand to the device's worker."""

    id: str | int
    device: str
    op: Literal["get", "set", "action"]
    name: str
    value: Any = None
    role: str = "viewer"


def _check_value(spec: SettingSpec, value: Any, device: str) -> Any:
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise CommandError(
                "bad_value", f"{device}.{spec.name} takes true or false, got {value!r}"
            )
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandError("bad_value", f"{device}.{spec.name} takes a number, got {value!r}")
    try:
        v = float(value)
    except OverflowError:
        raise CommandError(
            "bad_value",
            f"{device}.{spec.name} = an integer of {len(str(value))} digits is too large",
        ) from None
    if not math.isfinite(v):
        raise CommandError("bad_value", f"{device}.{spec.name} = {value!r} is not finite")
    assert spec.limits is not None
    lo, hi = spec.limits
    if not lo <= v <= hi:
        raise CommandError(
            "out_of_limits",
            f"{device}.{spec.name} = {exact(v)} is outside the safe range "
            f"[{exact(lo)}, {exact(hi)}]",
        )
    return v


def exact(x: float) -> str:
    """``x`` as short as ``:g`` prints it when that reads back exactly, else its full repr.

    ``0.1000001`` must not print as ``0.1`` next to a limit of ``0.1``.
    """
    short = f"{x:g}"
    return short if float(short) == x else repr(x)


def echoable_id(rid: Any) -> str | int | None:
    """The part of a request id a reply can echo: ints within 64 bits, text cut to 128 chars.

    A longer id is cut (text) or replaced by its first digits and its length (integers), so
    a refusal still names the request without growing with the input.
    """
    if isinstance(rid, bool):
        return None
    if isinstance(rid, int):
        if -MAX_INT_ID <= rid < MAX_INT_ID:
            return rid
        try:
            digits = str(rid)
        except ValueError:
            return None
        return f"{digits[:40]}... ({len(digits)} digits)"
    if isinstance(rid, str):
        return rid if len(rid) <= MAX_ECHOED_ID else rid[: MAX_ECHOED_ID - 3] + "..."
    return None


def parse_request(payload: bytes | str | Mapping[str, Any]) -> Request:
    """Parse and schema-check a request; CommandError ``bad_request`` says what is wrong."""
    if isinstance(payload, bytes | bytearray):
        if len(payload) > MAX_REQUEST_BYTES:
            raise CommandError("bad_request", f"request larger than {MAX_REQUEST_BYTES} bytes")
        try:
            payload = bytes(payload).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CommandError("bad_request", f"request is not UTF-8: {exc}") from None
    if isinstance(payload, str):
        if len(payload) > MAX_REQUEST_BYTES:
            raise CommandError("bad_request", f"request larger than {MAX_REQUEST_BYTES} bytes")
        try:
            payload = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            raise CommandError("bad_request", f"request is not valid JSON: {exc}") from None
    if not isinstance(payload, Mapping):
        raise CommandError(
            "bad_request", f"request must be a JSON object, got {type(payload).__name__}"
        )
    rid = echoable_id(payload.get("id"))
    try:
        req = Request.model_validate(dict(payload))
    except ValidationError as exc:
        msgs = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors()
        )
        raise CommandError("bad_request", msgs, rid) from None
    if (req.setting is None) == (req.action is None):
        raise CommandError(
            "bad_request", "a request needs exactly one of 'setting' or 'action'", rid
        )
    return req


def validate_request(
    payload: bytes | str | Mapping[str, Any],
    surfaces: Mapping[str, DeviceSurface],
    permissions: PermissionsConfig,
    *,
    role: str | None = None,
    auth: Authenticator | None = None,
) -> ValidRequest:
    """Full check of one request (schema, signature, device, name, value, limits, role).

    ``role`` overrides the user lookup (the interlock engine passes ``system``); ``auth``
    is the daemon's authenticator (it remembers nonces), else a fresh one checks only the
    signature and the freshness.
    """
    req = parse_request(payload)
    if role is None:
        try:
            role = (auth or Authenticator(permissions)).role_of(req)
        except CommandError as exc:
            exc.request_id = req.id
            raise
    return check_request(req, surfaces, role)


def check_request(req: Request, surfaces: Mapping[str, DeviceSurface], role: str) -> ValidRequest:
    """Device, name, value, limits and role of a parsed request whose user has ``role``."""
    rid = req.id
    try:
        if req.device == DAEMON:
            if req.setting in DAEMON_ACTIONS and DAEMON_ACTIONS[req.setting] == "viewer":
                if req.value is not None:
                    raise CommandError("bad_value", f"daemon {req.setting!r} cannot be set")
                _need(role, "viewer", f"daemon.{req.setting}")  # `qnet get CFG daemon status`
                return ValidRequest(rid, DAEMON, "action", req.setting, None, role)
            if req.action is None or req.action not in DAEMON_ACTIONS:
                raise CommandError(
                    "unknown_action",
                    f"the daemon's actions are {', '.join(sorted(DAEMON_ACTIONS))}; got "
                    f"{req.action or req.setting!r}",
                )
            _need(role, DAEMON_ACTIONS[req.action], f"daemon.{req.action}")
            return ValidRequest(rid, DAEMON, "action", req.action, req.value, role)
        surf = surfaces.get(req.device)
        if surf is None:
            known = ", ".join(sorted([*surfaces, DAEMON]))
            raise CommandError("unknown_device", f"no device {req.device!r} (known: {known})")
        if req.action is not None:
            if req.action not in surf.actions:
                raise CommandError(
                    "unknown_action",
                    f"{req.device} has no action {req.action!r} "
                    f"(actions: {', '.join(sorted(surf.actions))})",
                )
            needed = "viewer" if req.action == "readings" else "operator"
            _need(role, needed, f"{req.device}.{req.action}")
            if req.value is not None:
                raise CommandError("bad_value", f"action {req.action!r} takes no value")
            return ValidRequest(rid, req.device, "action", req.action, None, role)
        name = str(req.setting)
        if req.value is None:
            if name not in surf.settings and name not in surf.readables:
                known = ", ".join(sorted({*surf.settings, *surf.readables}))
                raise CommandError(
                    "unknown_setting", f"{req.device} has nothing called {name!r} (known: {known})"
                )
            _need(role, "viewer", f"{req.device}.{name}")
            return ValidRequest(rid, req.device, "get", name, None, role)
        spec = surf.settings.get(name)
        if spec is None:
            known = ", ".join(sorted(surf.settings)) or "none"
            raise CommandError(
                "unknown_setting", f"{req.device} has no setting {name!r} (settable: {known})"
            )
        _need(role, "operator", f"set {req.device}.{name}")
        value = _check_value(spec, req.value, req.device)
        return ValidRequest(rid, req.device, "set", name, value, role)
    except CommandError as exc:
        exc.request_id = rid
        raise


def _need(role: str, needed: str, what: str) -> None:
    if not role_allows(role, needed):
        raise CommandError("forbidden", f"{what} needs role {needed}, the request has {role!r}")


# -- replies -------------------------------------------------------------------------------


def ok_reply(request_id: str | int | None, result: Any) -> bytes:
    """The JSON reply of a request that succeeded."""
    body = {"id": request_id, "ok": True, "result": jsonable(result), "time_ns": time.time_ns()}
    return json.dumps(body, separators=(",", ":")).encode()


def error_reply(request_id: str | int | None, code: str, message: str) -> bytes:
    """The JSON reply of a refused or failed request."""
    body = {
        "id": request_id,
        "ok": False,
        "error": {"code": code, "message": message},
        "time_ns": time.time_ns(),
    }
    return json.dumps(body, separators=(",", ":")).encode()
