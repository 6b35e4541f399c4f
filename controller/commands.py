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
"""

from __future__ import annotations

import hmac
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from telemetry import Secret

from ._json import jsonable

MAX_REQUEST_BYTES = 16 * 1024
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

    @field_validator("id")
    @classmethod
    def _id(cls, v: str | int) -> str | int:
        if isinstance(v, bool):
            raise ValueError("id must be a string or an integer")
        if isinstance(v, str) and not 1 <= len(v) <= 128:
            raise ValueError("id must be 1-128 characters")
        return v


class UserConfig(BaseModel):
    """One operator: role and an optional token (from the environment or a file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role = "viewer"
    token: Secret | None = None


class PermissionsConfig(BaseModel):
    """Who may do what: the role of requests without a user, and the known users."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_role: Role = "viewer"
    users: dict[str, UserConfig] = Field(default_factory=dict)

    def role_of(self, user: str | None, token: str | None) -> str:
        """The role of a request's user (a wrong or missing token gives ``none``)."""
        if user is None:
            return self.default_role
        cfg = self.users.get(user)
        if cfg is None:
            return "none"
        if cfg.token is not None:
            try:
                expected = cfg.token.read(f"token of user {user}")
            except ValueError:
                return "none"
            if token is None or not hmac.compare_digest(token.encode(), expected.encode()):
                return "none"
        return cfg.role


def role_allows(role: str, needed: str) -> bool:
    """Whether ``role`` has at least the rights of ``needed`` (``system`` = operator)."""
    if role == "system":
        role = "operator"
    return ROLES.index(role) >= ROLES.index(needed)


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
    v = float(value)
    if not math.isfinite(v):
        raise CommandError("bad_value", f"{device}.{spec.name} = {value!r} is not finite")
    assert spec.limits is not None
    lo, hi = spec.limits
    if not lo <= v <= hi:
        raise CommandError(
            "out_of_limits",
            f"{device}.{spec.name} = {v:g} is outside the safe range [{lo:g}, {hi:g}]",
        )
    return v


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
    rid = payload.get("id")
    rid = rid if isinstance(rid, str | int) and not isinstance(rid, bool) else None
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
) -> ValidRequest:
    """Full check of one request (schema, device, name, value, limits, role).

    ``role`` overrides the user lookup (the interlock engine passes ``system``).
    """
    req = parse_request(payload)
    rid = req.id
    if role is None:
        role = permissions.role_of(req.user, req.token)
    try:
        if req.device == DAEMON:
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
