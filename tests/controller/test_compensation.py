import math

import numpy as np
import pytest

from controller.compensation import CompensationSettings, compensate


def _bowl(center, floor=0.01, scale=0.05):
    calls = []

    def measure(x):
        calls.append(list(x))
        d = np.asarray(x) - np.asarray(center)
        return floor + scale * float(np.sum(np.sin(d / 2.0) ** 2))

    return measure, calls


def test_reaches_target_from_misaligned_start():
    measure, calls = _bowl([3.0, 4.0, 2.0])
    limits = [(0.0, 10.0)] * 3
    res = compensate(measure, [1.0, 1.0, 1.0], limits, CompensationSettings(target_qber=0.012))
    assert res.converged, res.reason
    assert res.qber < 0.012
    assert res.evaluations == len(calls)
    for point in calls:
        assert all(0.0 <= v <= 10.0 for v in point)


def test_never_leaves_limits_even_when_optimum_is_outside():
    calls = []

    def measure(x):
        calls.append(list(x))
        return 0.01 + 0.001 * ((x[0] - 12.0) ** 2 + (x[1] + 3.0) ** 2)

    limits = [(0.0, 10.0), (0.0, 10.0)]
    res = compensate(measure, [5.0, 5.0], limits, CompensationSettings(target_qber=0.001))
    assert not res.converged
    assert all(0.0 <= v <= 10.0 for p in calls for v in p)
    assert res.setpoints[0] == pytest.approx(10.0)
    assert res.setpoints[1] == pytest.approx(0.0)


def test_start_outside_limits_is_clipped_before_measuring():
    measure, calls = _bowl([1.0])
    compensate(measure, [50.0], [(0.0, 2.0)], CompensationSettings(max_evaluations=5))
    assert calls[0] == [2.0]


def test_max_evaluations_and_stop_are_honoured():
    measure, _calls = _bowl([3.0, 3.0], floor=0.2)
    res = compensate(measure, [0, 0], [(0, 10)] * 2, CompensationSettings(max_evaluations=7))
    assert res.evaluations == 7 and res.reason == "max_evaluations reached"
    res = compensate(measure, [0, 0], [(0, 10)] * 2, should_stop=lambda: True)
    assert res.reason == "stopped" and res.evaluations == 1


def test_nan_measurements_are_treated_as_worst():
    def measure(x):
        return math.nan if x[0] > 1.0 else 0.3 - 0.1 * x[0]

    res = compensate(measure, [0.0], [(0, 5)], CompensationSettings(target_qber=0.15))
    assert res.setpoints[0] <= 1.0


def test_only_selected_elements_move():
    measure, calls = _bowl([3.0, 3.0, 3.0])
    compensate(
        measure,
        [0.0, 0.0, 0.0],
        [(0, 10)] * 3,
        CompensationSettings(elements=(1,), max_evaluations=20),
    )
    assert all(p[0] == 0.0 and p[2] == 0.0 for p in calls)


def test_bad_arguments():
    with pytest.raises(ValueError, match="limit pairs"):
        compensate(lambda x: 0.1, [0.0], [(0, 1), (0, 1)])
    with pytest.raises(ValueError, match="limits"):
        compensate(lambda x: 0.1, [0.0], [(1.0, 0.0)])
    with pytest.raises(ValueError, match="element index"):
        compensate(lambda x: 0.1, [0.0], [(0, 1)], CompensationSettings(elements=(3,)))


def test_scan_escapes_a_local_minimum_that_descent_alone_stalls_in():
    measure, _ = _bowl([3.0, 5.5, 2.0])
    limits = [(0.0, 10.0)] * 3
    plain = compensate(measure, [1.0, 1.0, 1.0], limits, CompensationSettings(target_qber=0.012))
    assert not plain.converged  # descent walks into the periodic neighbour at the boundary
    calls = []

    def counted(x):
        calls.append(list(x))
        return measure(x)

    scanned = compensate(
        counted,
        [1.0, 1.0, 1.0],
        limits,
        CompensationSettings(target_qber=0.012, scan_points=11, max_evaluations=300),
    )
    assert scanned.converged and scanned.qber < 0.012
    assert all(0.0 <= v <= 10.0 for p in calls for v in p)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("scan_points", [0, 11])
def test_nothing_to_move_returns_instead_of_spinning(scan_points):
    # a controller without element settings: no setpoints, so no elements by default
    calls = []

    def measure(x):
        calls.append(list(x))
        return 0.2

    res = compensate(measure, [], [], CompensationSettings(scan_points=scan_points))
    assert res.reason == "no elements" and not res.converged
    assert res.evaluations == 1 and calls == [[]]
    # an empty selection (refused by the settings' validation, but not by compensate)
    empty = CompensationSettings.model_construct(
        **{**CompensationSettings().model_dump(), "elements": (), "scan_points": scan_points}
    )
    res = compensate(measure, [1.0, 2.0], [(0, 5)] * 2, empty)
    assert res.reason == "no elements" and res.setpoints == [1.0, 2.0]


def test_settings_refuse_an_empty_or_negative_element_selection():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="elements"):
        CompensationSettings(elements=())
    with pytest.raises(ValidationError, match=r"elements\.0"):
        CompensationSettings(elements=(-1,))
    assert CompensationSettings(elements=(0, 2)).elements == (0, 2)
