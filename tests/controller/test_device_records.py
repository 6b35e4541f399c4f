from controller._device_records import device_records
from telemetry import to_line


def test_readings_become_schema_records():
    recs = device_records(
        "n", "pump", "thorlabs_cld1015", {"tec_temperature_c": 25.0, "laser_on": True}, 1
    )
    assert [r.measurement for r in recs] == ["laser"]
    assert recs[0].fields["temperature_k"] == 298.15
    recs = device_records("n", "pol", "meadowlark_d3050", {"setpoints": [1.0, 2.0, 3.0, 4.0]}, 1)
    assert [r.tags["axis"] for r in recs] == ["1", "2", "3", "4"]
    recs = device_records("n", "smu", "keithley_2400", {"latched": True}, 1)
    assert recs[0].fields["state"] == "latched"
    for r in recs:
        assert to_line(r)  # encodable


def test_unknown_or_empty_readings_give_nothing():
    assert device_records("n", "x", "idq_id1000", {"counts": [1, 2]}, 1) == []
    assert device_records("n", "pm", "thorlabs_pm100", {}, 1) == []
    assert device_records("n", "pm", "thorlabs_pm100", {"power_w": "bad"}, 1) == []
