import math

import pytest
from pydantic import ValidationError

from controller.interlocks import ActionSpec, InterlockEngine, InterlockRule


def _rate_rule(**kw):
    base = dict(
        reading="max_singles_rate_hz",
        kind="above",
        trip_above=1e6,
        clear_below=5e5,
        device="pump_laser",
        actions=[{"device": "pump_laser", "setting": "laser_on", "value": False}],
    )
    base.update(kw)
    return InterlockRule.model_validate(base)


def test_above_trips_once_and_clears_with_hysteresis():
    eng = InterlockEngine({"rate": _rate_rule()})
    assert eng.evaluate({"max_singles_rate_hz": 9e5}, 0.0) == []
    ev = eng.evaluate({"max_singles_rate_hz": 2e6}, 1.0)
    assert [e.event for e in ev] == ["trip"]
    assert ev[0].actions[0].as_request() == {
        "device": "pump_laser",
        "setting": "laser_on",
        "value": False,
    }
    assert eng.active() == ["rate"]
    # still above: no second trip; between thresholds: no clear (hysteresis)
    assert eng.evaluate({"max_singles_rate_hz": 3e6}, 2.0) == []
    assert eng.evaluate({"max_singles_rate_hz": 8e5}, 3.0) == []
    ev = eng.evaluate({"max_singles_rate_hz": 4e5}, 4.0)
    assert [e.event for e in ev] == ["clear"]
    assert eng.active() == []
    assert eng.status()["rate"]["trips"] == 1


def test_outside_range_with_hysteresis_and_persist():
    rule = InterlockRule(
        reading="pump_laser.tec_temperature_c",
        kind="outside",
        min=20.0,
        max=30.0,
        hysteresis=0.5,
        persist=2,
        actions=[ActionSpec(device="pump_laser", setting="laser_on", value=False)],
    )
    eng = InterlockEngine({"tec": rule})
    assert eng.evaluate({"pump_laser.tec_temperature_c": 31.0}, 0) == []  # 1st sample
    assert eng.evaluate({"pump_laser.tec_temperature_c": 25.0}, 1) == []  # streak reset
    assert eng.evaluate({"pump_laser.tec_temperature_c": 19.0}, 2) == []
    assert [e.event for e in eng.evaluate({"pump_laser.tec_temperature_c": 18.0}, 3)] == ["trip"]
    assert eng.evaluate({"pump_laser.tec_temperature_c": 20.2}, 4) == []  # inside, not by margin
    assert [e.event for e in eng.evaluate({"pump_laser.tec_temperature_c": 21.0}, 5)] == ["clear"]


def test_flag_rule_repeats_actions_while_tripped():
    rule = InterlockRule(
        reading="snspd_bias.latched",
        kind="flag",
        repeat_s=2.0,
        actions=[ActionSpec(device="snspd_bias", action="reset_latch")],
    )
    eng = InterlockEngine({"latch": rule})
    assert [e.event for e in eng.evaluate({"snspd_bias.latched": True}, 0.0)] == ["trip"]
    assert eng.evaluate({"snspd_bias.latched": True}, 1.0) == []
    assert [e.event for e in eng.evaluate({"snspd_bias.latched": True}, 2.5)] == ["repeat"]
    assert [e.event for e in eng.evaluate({"snspd_bias.latched": False}, 3.0)] == ["clear"]


def test_missing_or_nan_readings_change_nothing():
    eng = InterlockEngine({"rate": _rate_rule()})
    eng.evaluate({"max_singles_rate_hz": 2e6}, 0.0)
    assert eng.evaluate({}, 1.0) == []
    assert eng.evaluate({"max_singles_rate_hz": math.nan}, 2.0) == []
    assert eng.evaluate({"max_singles_rate_hz": None}, 3.0) == []
    assert eng.active() == ["rate"]


def test_disabled_rule_never_trips():
    eng = InterlockEngine({"rate": _rate_rule(enabled=False)})
    assert eng.evaluate({"max_singles_rate_hz": 1e9}, 0.0) == []
    assert eng.readings_needed() == []


def test_on_clear_actions_emitted():
    rule = _rate_rule(on_clear=[{"device": "daemon", "action": "resume_key"}])
    eng = InterlockEngine({"r": rule})
    eng.evaluate({"max_singles_rate_hz": 2e6}, 0)
    (ev,) = eng.evaluate({"max_singles_rate_hz": 0.0}, 1)
    assert ev.actions[0].action == "resume_key"
    assert ev.as_dict()["event"] == "clear"


@pytest.mark.parametrize(
    "bad",
    [
        {"reading": "x", "kind": "above"},
        {"reading": "x", "kind": "above", "trip_above": 1, "clear_below": 2},
        {"reading": "x", "kind": "outside", "min": 1},
        {"reading": "x", "kind": "outside", "min": 0, "max": 1, "hysteresis": 0.6},
        {"reading": "x", "kind": "flag", "actions": [{"device": "d"}]},
        {"reading": "x", "kind": "flag", "actions": [{"device": "d", "setting": "s"}]},
        {"reading": "x", "kind": "flag", "bogus": 1},
    ],
)
def test_bad_rules_are_refused(bad):
    with pytest.raises(ValidationError):
        InterlockRule.model_validate(bad)
