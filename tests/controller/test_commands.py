import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.commands import (
    Authenticator,
    CommandError,
    PermissionsConfig,
    error_reply,
    ok_reply,
    parse_request,
    sign_request,
    surface_for,
    validate_request,
)
from drivers import DRIVERS

LIMITS = {"current_setpoint_a": (0.0, 0.1), "tec_temperature_setpoint_c": (20.0, 30.0)}


def _surfaces():
    return {
        "pump_laser": surface_for("pump_laser", DRIVERS["thorlabs_cld1015"], LIMITS),
        "pol": surface_for("pol", DRIVERS["meadowlark_d3050"], {"element_voltage_v": (0.0, 8.0)}),
        "bias": surface_for("bias", DRIVERS["keithley_2400"], {"bias_current_a": (0.0, 2e-5)}),
    }


OPS = PermissionsConfig(default_role="operator")


@pytest.fixture
def surfaces():
    return _surfaces()


SURFACES = _surfaces()


def test_surface_lists_controls_switches_and_extras(surfaces):
    laser = surfaces["pump_laser"].describe()
    assert laser["settings"]["current_setpoint_a"] == {"kind": "number", "limits": [0.0, 0.1]}
    assert laser["settings"]["laser_on"]["kind"] == "bool"
    assert "tec_temperature_c" in laser["readables"]
    pol = surfaces["pol"].describe()
    assert pol["settings"]["element3_voltage_v"]["limits"] == [0.0, 8.0]
    assert "reset_latch" in surfaces["bias"].describe()["actions"]
    # a control without a configured range (compliance_v) is not settable over the API
    assert "compliance_v" not in surfaces["bias"].settings


def test_valid_set_get_action(surfaces):
    r = validate_request(
        '{"id": 1, "device": "pump_laser", "setting": "current_setpoint_a", "value": 0.05}',
        surfaces,
        OPS,
    )
    assert (r.op, r.name, r.value) == ("set", "current_setpoint_a", 0.05)
    r = validate_request({"id": "a", "device": "pump_laser", "setting": "current_a"}, surfaces, OPS)
    assert r.op == "get"
    r = validate_request({"id": "b", "device": "bias", "action": "reset_latch"}, surfaces, OPS)
    assert r.op == "action"
    r = validate_request({"id": "c", "device": "daemon", "action": "calibrate"}, surfaces, OPS)
    assert (r.device, r.name) == ("daemon", "calibrate")


@pytest.mark.parametrize(
    ("req", "code"),
    [
        (b"\xff\xfe", "bad_request"),
        ("not json", "bad_request"),
        ("[1, 2]", "bad_request"),
        ({"device": "pump_laser", "setting": "laser_on", "value": True}, "bad_request"),
        ({"id": True, "device": "pump_laser", "setting": "laser_on"}, "bad_request"),
        ({"id": 1, "device": "pump_laser"}, "bad_request"),
        ({"id": 1, "device": "pump_laser", "setting": "x", "action": "y"}, "bad_request"),
        ({"id": 1, "device": "pump_laser", "setting": "laser_on", "extra": 1}, "bad_request"),
        ({"id": 1, "device": "nope", "setting": "laser_on"}, "unknown_device"),
        ({"id": 1, "device": "pump_laser", "setting": "nope", "value": 1}, "unknown_setting"),
        ({"id": 1, "device": "pump_laser", "setting": "current_a", "value": 1}, "unknown_setting"),
        ({"id": 1, "device": "pump_laser", "action": "selfdestruct"}, "unknown_action"),
        ({"id": 1, "device": "daemon", "action": "explode"}, "unknown_action"),
        (
            {"id": 1, "device": "pump_laser", "setting": "current_setpoint_a", "value": 0.2},
            "out_of_limits",
        ),
        (
            {"id": 1, "device": "pump_laser", "setting": "current_setpoint_a", "value": -1e-9},
            "out_of_limits",
        ),
        (
            {"id": 1, "device": "pump_laser", "setting": "current_setpoint_a", "value": "0.05"},
            "bad_value",
        ),
        (
            {"id": 1, "device": "pump_laser", "setting": "current_setpoint_a", "value": True},
            "bad_value",
        ),
        ({"id": 1, "device": "pump_laser", "setting": "laser_on", "value": 1}, "bad_value"),
        (
            {"id": 1, "device": "pol", "setting": "element2_voltage_v", "value": 9.0},
            "out_of_limits",
        ),
        ({"id": 1, "device": "bias", "action": "reset_latch", "value": 3}, "bad_value"),
    ],
)
def test_bad_requests_get_clear_codes(surfaces, req, code):
    with pytest.raises(CommandError) as info:
        validate_request(req, surfaces, OPS)
    assert info.value.code == code
    assert info.value.message


def test_non_finite_values_refused(surfaces):
    with pytest.raises(CommandError) as info:
        validate_request(
            '{"id": 1, "device": "pump_laser", "setting": "current_setpoint_a", "value": NaN}',
            surfaces,
            OPS,
        )
    assert info.value.code == "bad_value"
    assert info.value.request_id == 1


def test_permissions(surfaces, monkeypatch):
    monkeypatch.setenv("QNET_TEST_TOKEN", "s3cret")
    perms = PermissionsConfig.model_validate(
        {
            "default_role": "viewer",
            "users": {"op": {"role": "operator", "token": {"env": "QNET_TEST_TOKEN"}}},
        }
    )
    set_req = {"id": 1, "device": "pump_laser", "setting": "laser_on", "value": False}
    with pytest.raises(CommandError) as info:
        validate_request(set_req, surfaces, perms)
    assert info.value.code == "forbidden"
    # a viewer may read
    validate_request({"id": 2, "device": "pump_laser", "setting": "laser_on"}, surfaces, perms)
    with pytest.raises(CommandError):
        validate_request(sign_request("", {**set_req, "user": "op"}, "wrong"), surfaces, perms)
    with pytest.raises(CommandError):
        validate_request({**set_req, "user": "mallory"}, surfaces, perms)
    ok = validate_request(sign_request("", {**set_req, "user": "op"}, "s3cret"), surfaces, perms)
    assert ok.role == "operator"
    assert validate_request(set_req, surfaces, perms, role="system").op == "set"


@pytest.fixture
def signed_perms(monkeypatch):
    monkeypatch.setenv("QNET_TEST_TOKEN", "s3cret")
    return PermissionsConfig.model_validate(
        {
            "default_role": "viewer",
            "users": {"op": {"role": "operator", "token": {"env": "QNET_TEST_TOKEN"}}},
        }
    )


def _code(fn):
    with pytest.raises(CommandError) as info:
        fn()
    return info.value.code, info.value.message


def test_signed_requests_cannot_be_replayed_altered_or_delayed(surfaces, signed_perms):
    auth = Authenticator(signed_perms, "alice", max_skew_s=30.0)
    body = {"id": 1, "user": "op", "device": "pump_laser", "setting": "laser_on", "value": False}
    signed = sign_request("alice", body, "s3cret")
    assert "token" not in signed and len(signed["sig"]) == 64

    def check(b, now=None):
        return auth.role_of(parse_request(json.dumps(b)), now)

    assert check(signed) == "operator"
    code, msg = _code(lambda: check(signed))  # the same bytes again
    assert code == "replayed", msg
    # a changed value, device, id or target node breaks the signature
    for changed in (
        {**signed, "value": True},
        {**signed, "setting": "current_setpoint_a", "value": 0.05},
        {**signed, "id": 2},
        {**signed, "nonce": "f" * 32},
    ):
        code, msg = _code(lambda b=changed: check(b))
        assert code == "bad_signature", (changed, msg)
    other_node = Authenticator(signed_perms, "bob")
    assert (
        _code(lambda: other_node.role_of(parse_request(sign_request("alice", body, "s3cret"))))[0]
        == "bad_signature"
    )
    # too old or too far ahead: stale (the clock of the check is moved, not the request)
    fresh = sign_request("alice", body, "s3cret", now_s=1_000_000.0)
    assert _code(lambda: check(fresh, 1_000_031.0))[0] == "stale"
    assert _code(lambda: check(fresh, 999_969.0))[0] == "stale"
    assert check(fresh, 1_000_029.0) == "operator"
    # the bearer token itself, or no signature at all, is refused
    assert _code(lambda: check({**body, "token": "s3cret"}))[0] == "bad_signature"
    assert _code(lambda: check(body))[0] == "bad_signature"
    message = _code(lambda: check({**body, "token": "s3cret"}))[1]
    assert "s3cret" not in message


def test_nonce_memory_is_bounded_by_the_freshness_window(signed_perms):
    auth = Authenticator(signed_perms, "alice", max_skew_s=1.0)
    body = {"id": 1, "user": "op", "device": "daemon", "action": "status"}
    t = 2_000_000.0
    for k in range(500):
        now = t + k * 0.01  # 5 s of requests at 100/s
        assert auth.role_of(parse_request(sign_request("alice", body, "s3cret", now)), now)
    # only the last ~2 s (ts + skew not yet passed) are remembered
    assert auth.remembered <= 2.0 / 0.01 + 1
    # one user over its cap is refused busy; another user is not affected
    capped = Authenticator(
        PermissionsConfig.model_validate(
            {
                "users": {
                    "op": {"role": "operator", "token": {"env": "QNET_TEST_TOKEN"}},
                    "op2": {"role": "operator", "token": {"env": "QNET_TEST_TOKEN"}},
                }
            }
        ),
        "alice",
        max_nonces=10,
    )
    for _ in range(10):
        capped.role_of(parse_request(sign_request("alice", body, "s3cret", t)), t)
    code, _ = _code(
        lambda: capped.role_of(parse_request(sign_request("alice", body, "s3cret", t)), t)
    )
    assert code == "busy"
    other = {**body, "user": "op2"}
    assert capped.role_of(parse_request(sign_request("alice", other, "s3cret", t)), t)


def test_daemon_readings_through_get_and_exact_limits_in_refusals(surfaces):
    perms = PermissionsConfig()
    # `qnet get CFG daemon status` sends a setting, not an action
    v = validate_request({"id": 1, "device": "daemon", "setting": "status"}, surfaces, perms)
    assert (v.device, v.op, v.name) == ("daemon", "action", "status")
    code, _ = _code(
        lambda: validate_request(
            {"id": 1, "device": "daemon", "setting": "calibrate"}, surfaces, perms
        )
    )
    assert code == "unknown_action"
    req = {"id": 1, "device": "pump_laser", "setting": "current_setpoint_a", "value": 0.1000001}
    code, msg = _code(lambda: validate_request(req, surfaces, perms, role="system"))
    assert code == "out_of_limits", msg
    assert "= 0.1000001 is outside the safe range [0, 0.1]" in msg, msg


def test_huge_numbers_keep_the_request_id(surfaces):
    perms = PermissionsConfig()
    huge = "9" * 401
    text = (
        '{"id": "r-401", "device": "pump_laser", "setting": "current_setpoint_a", '
        f'"value": {huge}}}'
    )
    with pytest.raises(CommandError) as info:
        validate_request(text, surfaces, perms, role="system")
    assert info.value.code == "bad_value" and info.value.request_id == "r-401"
    assert "401 digits" in info.value.message
    with pytest.raises(CommandError) as info:
        validate_request(
            f'{{"id": {huge}, "device": "daemon", "action": "status"}}', surfaces, perms
        )
    assert info.value.code == "bad_request"
    rid = info.value.request_id
    assert isinstance(rid, str) and rid.startswith("9" * 40) and "401 digits" in rid
    long_id = "x" * 5000
    with pytest.raises(CommandError) as info:
        validate_request(json.dumps({"id": long_id, "device": "daemon"}), surfaces, perms)
    assert len(info.value.request_id) <= 128


def test_replies_are_json():
    body = json.loads(ok_reply(3, {"x": float("nan"), "y": [1, 2]}))
    assert body == {
        "id": 3,
        "ok": True,
        "result": {"x": None, "y": [1, 2]},
        "time_ns": body["time_ns"],
    }
    err = json.loads(error_reply(None, "bad_request", "nope"))
    assert err["ok"] is False and err["error"]["code"] == "bad_request"


def test_jsonable_makes_numpy_and_non_finite_values_plain_json():
    import numpy as np

    from controller._json import jsonable

    value = {
        1: np.array([1.5, np.nan]),
        "s": np.float32("inf"),
        "i": np.int64(7),
        "t": (np.float64(2.0), None, True),
        "o": object,
    }
    out = jsonable(value)
    assert out == {"1": [1.5, None], "s": None, "i": 7, "t": [2.0, None, True], "o": str(object)}
    assert type(out["i"]) is int
    json.dumps(out, allow_nan=False)  # strict JSON


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        json_values,
        st.fixed_dictionaries(
            {},
            optional={
                "id": json_values,
                "device": st.sampled_from(["pump_laser", "pol", "bias", "daemon", "x"])
                | json_values,
                "setting": st.sampled_from(["current_setpoint_a", "laser_on", "element1_voltage_v"])
                | json_values,
                "action": st.sampled_from(["reset_latch", "calibrate", "readings"]) | json_values,
                "value": json_values,
            },
        ),
    )
)
def test_fuzz_never_passes_out_of_range_values(payload):
    surfaces = SURFACES
    if not isinstance(payload, bytes):
        try:
            payload = json.dumps(payload)
        except (TypeError, ValueError):
            return
    try:
        r = validate_request(payload, surfaces, OPS)
    except CommandError as exc:
        assert exc.code in {
            "bad_request",
            "unknown_device",
            "unknown_setting",
            "unknown_action",
            "bad_value",
            "out_of_limits",
            "forbidden",
        }
        return
    if r.op == "set":
        spec = surfaces[r.device].settings[r.name]
        if spec.kind == "number":
            lo, hi = spec.limits
            assert lo <= r.value <= hi
        else:
            assert isinstance(r.value, bool)
