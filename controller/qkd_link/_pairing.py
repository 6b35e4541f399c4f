"""Coincidences of the sender's times and the analyser's (clock-corrected) times, as indices."""

from __future__ import annotations

import numpy as np


def pair_indices(
    times_a_ps: np.ndarray, times_b_ps: np.ndarray, half_window_ps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(ia, ib)`` with ``|t_b - t_a| <= half_window_ps``, each event in at most one pair.

    Both arrays sorted (``times_b_ps`` already mapped onto A's clock). Each A event
    takes the earliest B event inside its window; a B event claimed twice stays with
    the first A event. Returned sorted by ``ia`` (so by A's time).
    """
    ta = np.asarray(times_a_ps, np.float64)
    tb = np.asarray(times_b_ps, np.float64)
    if ta.size == 0 or tb.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty.copy()
    j = np.searchsorted(tb, ta - half_window_ps, side="left")
    ok = j < tb.size
    jj = np.minimum(j, tb.size - 1)
    ok &= tb[jj] <= ta + half_window_ps
    ia = np.flatnonzero(ok).astype(np.int64)
    ib = jj[ok].astype(np.int64)
    if ib.size:
        _, first = np.unique(ib, return_index=True)
        first.sort()
        ia, ib = ia[first], ib[first]
    return ia, ib
