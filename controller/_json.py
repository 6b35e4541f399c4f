"""``jsonable``: plain JSON values from numpy arrays/scalars and non-finite floats.

Shared by the daemon's replies (``commands.ok_reply``) and the CLI's ``--json``
output (``qnet analyze``, ``qnet sample``); kept free of heavy imports so the
offline commands start fast.
"""

from __future__ import annotations

import math
from typing import Any


def jsonable(value: Any) -> Any:
    """``value`` with nan/inf as None, numpy values as Python ones, other objects as ``str``.

    Strict JSON has no nan/inf, and ``json.dumps`` cannot encode numpy types.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
