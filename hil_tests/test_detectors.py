"""Dark counts with the pump off; the SPAD module's own count rate, dark and with light."""

from __future__ import annotations

import pytest

from ._bench import KIND_TEXT


@pytest.mark.needs("laser", "time_tagger")
def test_dark_counts_pump_off(bench, hil_report):
    """Every detector's rate with the pump off stays below ``hil.dark_count_max_hz``."""
    _, laser = bench.one("laser")
    laser.laser_on = False
    assert laser.laser_on is False, "the pump laser does not report its output off"
    batch = bench.acquire(bench.hil.dark_count_window_s)
    rates = bench.rates_hz(batch)
    names = bench.detector_names
    hil_report.data["dark_counts"] = {names[c]: float(rates[c]) for c in sorted(names)}
    bound = bench.hil.dark_count_max_hz
    over = [
        f"detector {names[c]} (channel {c}): {rates[c]:.0f} counts/s with the pump off, "
        f"bound {bound:.0f}/s - check for stray light (room lights, open fiber ends), the "
        f"detector's temperature and bias ({bench.detector_hint(c)})"
        for c in sorted(names)
        if rates[c] > bound
    ]
    assert not over, "\n".join(over)


@pytest.mark.needs("spad", "laser")
def test_spad_module_dark_rate(bench):
    """The SPAD module's own counter, pump off, stays below the dark-count bound."""
    _, laser = bench.one("laser")
    laser.laser_on = False
    bound = bench.hil.dark_count_max_hz
    for name, spad in bench.of_kind("spad"):
        rate = spad.count_rate_hz
        assert rate <= bound, (
            f"{name}: {rate} counts/s with the pump off, bound {bound:.0f}/s - check for stray "
            f"light and the module's temperature ({spad.temperature_c:.1f} C)"
        )


@pytest.mark.optical
@pytest.mark.needs("spad", "laser")
def test_spad_module_counts_with_pump(bench):
    """With the pump on, the SPAD module's counter sees light."""
    current = bench.pump()
    floor = bench.hil.min_singles_hz
    if bench.testbed is None:
        import time

        time.sleep(max(0.3, 1.5 * bench.instruments[bench.one("spad")[0]].integration_time_s))
    for name, spad in bench.of_kind("spad"):
        rate = spad.count_rate_hz
        assert rate >= floor, (
            f"{name} ({KIND_TEXT['spad']}): {rate} counts/s with the pump on at "
            f"{current * 1e3:.1f} mA (need >= {floor:.0f}/s) - check that the module is armed "
            f"(running: {spad.running}), its bias ({spad.bias_v:.1f} V) and the fiber to it"
        )
