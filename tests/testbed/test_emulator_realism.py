"""The emulated bench behaves like a real one where an operator would notice."""

from __future__ import annotations

import numpy as np

from drivers.sim.instruments import CLD1015Emulator, D3050Emulator, ID1000Emulator
from drivers.sim.testbed import Testbed

from .conftest import make_config


def test_each_emulated_instrument_has_its_own_serial() -> None:
    tb = Testbed(make_config())
    idents = {name: emu.identity for name, emu in tb.emulators.items() if not name.startswith("_")}
    serials = [emu.serial for emu in tb.emulators.values()]
    assert len(set(serials)) == len(serials)
    # two taggers of the same model: different identity replies
    taggers = [i for i in idents.values() if "ID1000" in i]
    assert len(taggers) == 2 and taggers[0] != taggers[1]
    # the same bench built again: the same serials (they do not depend on the process)
    again = Testbed(make_config())
    assert [e.serial for e in again.emulators.values()] == serials
    # stand-alone emulators differ too, and still match their drivers' identity patterns
    a, b = CLD1015Emulator(), CLD1015Emulator()
    assert a.identity != b.identity and a.identity.startswith("Thorlabs,CLD1015,M")
    assert "D3050" in D3050Emulator().handle("ver:?")
    assert ID1000Emulator().handle("*IDN?").startswith("ID Quantique,ID1000,TC-")


def test_input_counters_carry_shot_noise() -> None:
    tb = Testbed(make_config())
    tagger = next(e for n, e in tb.emulators.items() if isinstance(e, ID1000Emulator))
    reads = np.array(
        [[int(tagger.handle(f"INPU{k}:COUN?")) for k in range(1, 5)] for _ in range(200)]
    )
    # the four channels of one read differ (they were identical: one model rate, rounded)
    assert len({tuple(r) for r in reads}) > 150
    assert any(len(set(r)) > 1 for r in reads)
    # each channel scatters around its model rate by about sqrt(N) (Poisson)
    mean, var = reads.mean(axis=0), reads.var(axis=0, ddof=1)
    assert np.all(mean > 1000)
    assert np.all((var > 0.5 * mean) & (var < 2.0 * mean))
