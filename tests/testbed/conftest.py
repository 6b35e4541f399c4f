"""Shared helpers of the testbed tests: small configs, coincidence counting, QBER."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coincidence import RoleMap, TagBatch, qber_from_matrix
from drivers.sim.testbed import Testbed, TestbedConfig

REPO = Path(__file__).resolve().parents[2]
TESTBED_YAML = REPO / "configs" / "testbed.yaml"
ROLES = RoleMap(alice={"H": 0, "V": 1, "D": 2, "A": 3}, bob={"H": 4, "V": 5, "D": 6, "A": 7})


def make_config(**changes) -> TestbedConfig:
    """configs/testbed.yaml with top-level or physics fields replaced (dotted keys)."""
    cfg = TestbedConfig.load(TESTBED_YAML)
    raw = cfg.model_dump()
    for key, value in changes.items():
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    return TestbedConfig.model_validate(raw)


@pytest.fixture
def testbed() -> Testbed:
    tb = Testbed(make_config(**{"physics.bob.drift_rad_per_sqrt_s": 0.0}))
    yield tb
    tb.stop()


def coincidence_matrix(batch: TagBatch, delays_ps, window_ps: int) -> np.ndarray:
    """Alice x Bob coincidences (8x8, only [0..3, 4..7] filled) with |dt| <= window / 2."""
    m = np.zeros((8, 8), np.int64)
    ts, ch = batch.timestamps, batch.channels
    per = [np.sort(ts[ch == c] - int(delays_ps[c])) for c in range(8)]
    half = window_ps // 2
    for i in range(4):
        for j in range(4, 8):
            a, b = per[i], per[j]
            lo = np.searchsorted(b, a - half, side="left")
            hi = np.searchsorted(b, a + half, side="right")
            m[i, j] = int(np.sum(hi - lo))
    return m


def qber(batch: TagBatch, delays_ps, window_ps: int = 1000):
    """(qber_z, qber_x) measured from a shared-clock 8-channel batch."""
    m = coincidence_matrix(batch, delays_ps, window_ps)
    rep = qber_from_matrix(m, batch.duration_ps * 1e-12, ROLES)
    return rep.qber_z, rep.qber_x, rep
