"""Identity of every instrument; setpoint round trips inside the limits, refusal outside."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest

from drivers import LimitError, control

from ._bench import KIND_TEXT, watch_traffic

KINDS = [pytest.param(k, marks=pytest.mark.needs(k), id=k) for k in KIND_TEXT]


def _configured_quantities(bench, name):
    """(setting name, spec) of each number setting whose safe range the config sets."""
    limits = bench.node.instruments[name].limits
    surf = bench.surface(name)
    out = []
    for key, spec in surf.settings.items():
        if spec.kind != "number":
            continue
        if key in limits or (
            re.fullmatch(r"element\d_voltage_v", key) and "element_voltage_v" in limits
        ):
            out.append((key, spec))
    inst = bench.instruments[name]
    if "threshold_v" in limits and hasattr(inst, "set_threshold"):
        for n in range(1, inst.N_INPUTS + 1):
            out.append(
                (
                    f"input{n}_threshold_v",
                    SimpleNamespace(
                        limits=inst.limits["threshold_v"],
                        getter=lambda i, n=n: i.threshold(n),
                        setter=lambda i, v, n=n: i.set_threshold(n, v),
                    ),
                )
            )
    return out


def _tolerance(inst, key, lo, hi):
    desc = getattr(type(inst), key, None)
    quantum = 0.0
    if isinstance(desc, control) and desc.integer:
        quantum = 1.0 / desc.scale
    elif key.startswith("element"):
        quantum = 1.0 / 6553.5
    return max(1e-3 * (hi - lo), quantum)


def _is_count(inst, key):
    """A whole-number quantity (e.g. averages): the driver refuses fractions."""
    desc = getattr(type(inst), key, None)
    return isinstance(desc, control) and desc.integer and desc.scale == 1.0


def _opened(bench, kind):
    pairs = bench.of_kind(kind)
    missing = [n for n in bench.configured(kind) if n not in bench.instruments]
    assert not missing, "; ".join(
        f"{n} ({KIND_TEXT[kind]}) at {bench.node.instruments[n].resource} could not be opened: "
        f"{bench.open_errors.get(n)} - check its power, cable and address, and that the "
        "configured driver matches the instrument"
        for n in missing
    )
    return pairs


@pytest.mark.parametrize("kind", KINDS)
def test_identity(bench, kind):
    """Every configured instrument of the kind answers with the configured model's identity."""
    for name, inst in _opened(bench, kind):
        idn = inst.query(inst.IDN_QUERY).strip()
        pattern = inst.identity_pattern
        assert re.search(pattern, idn), (
            f"{name}: identity {idn!r} does not match {pattern!r} ({inst.MODEL}) - is the "
            "right instrument at this address?"
        )
        assert idn == inst.identity, (
            f"{name}: identity changed from {inst.identity!r} to {idn!r} during the run - "
            "was the instrument swapped or power-cycled?"
        )


@pytest.mark.parametrize("kind", KINDS)
def test_setpoint_round_trip(bench, kind):
    """Each configured quantity set inside its safe range reads back the value that was set."""
    failures, checked = [], 0
    for name, inst in _opened(bench, kind):
        for key, spec in _configured_quantities(bench, name):
            lo, hi = spec.limits
            tol = _tolerance(inst, key, lo, hi)
            for frac in (0.2, 0.6):
                value = lo + frac * (hi - lo)
                if _is_count(inst, key):
                    value = float(round(value))
                spec.setter(inst, value)
                back = float(spec.getter(inst))
                checked += 1
                if not abs(back - value) <= tol:
                    failures.append(
                        f"{name}.{key}: set {value:.6g}, read back {back:.6g} (tolerance {tol:.3g})"
                        " - check the instrument's units, mode and front-panel lock"
                    )
    if checked == 0:
        pytest.skip(f"the config sets no safe ranges for the {KIND_TEXT[kind]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("kind", KINDS)
def test_setpoint_refused_outside_limits(bench, kind):
    """Values outside the safe range (and NaN) raise LimitError and nothing reaches the wire."""
    failures, checked = [], 0
    for name, inst in _opened(bench, kind):
        for key, spec in _configured_quantities(bench, name):
            lo, hi = spec.limits
            span = (hi - lo) or max(abs(hi), 1.0)
            before = float(spec.getter(inst))
            for value in (lo - 0.1 * span, hi + 0.1 * span, math.nan):
                checked += 1
                with watch_traffic(name) as wire:
                    try:
                        spec.setter(inst, value)
                    except LimitError:
                        pass
                    else:
                        failures.append(
                            f"{name}.{key} = {value:g} outside [{lo:g}, {hi:g}] was accepted - "
                            "the driver's limit check is bypassed: do not use this bench"
                        )
                if wire.sent:
                    failures.append(
                        f"{name}.{key} = {value:g}: refused but {wire.sent} was sent to the "
                        "instrument"
                    )
            after = float(spec.getter(inst))
            if abs(after - before) > _tolerance(inst, key, lo, hi):
                failures.append(f"{name}.{key} changed from {before:g} to {after:g} after refusals")
    if checked == 0:
        pytest.skip(f"the config sets no safe ranges for the {KIND_TEXT[kind]}")
    assert not failures, "\n".join(failures)
