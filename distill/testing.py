"""Helpers shared by tests and benchmarks: correlated keys and an in-process two-side driver.

Shipped with the room (like ``pymeasure.test``) so tests, benchmarks and the
emulated link use one driver; ``tamper`` lets a test change any message.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._auth import Authenticator
from ._errors import ProtocolError
from ._finite import FiniteKeyConfig
from ._session import AliceFrame, BobFrame, FrameInfo

Tamper = Callable[[str, int, bytes], bytes]


def correlated_keys(
    n: int, qber: float, rng: np.random.Generator, exact: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Alice's random key and Bob's copy with errors (iid at ``qber``, or exactly round(qber n))."""
    a = rng.integers(0, 2, n, dtype=np.uint8)
    if exact:
        e = np.zeros(n, np.uint8)
        e[rng.choice(n, round(qber * n), replace=False)] = 1
    else:
        e = (rng.random(n) < qber).astype(np.uint8)
    return a, a ^ e


def run_frame(
    alice_key: np.ndarray,
    bob_key: np.ndarray,
    *,
    qber: float,
    n_test: int = 10_000,
    frame_id: int = 1,
    seed: int = 12345,
    config: FiniteKeyConfig | None = None,
    auth: tuple[Authenticator, Authenticator] | None = None,
    tamper: Tamper | None = None,
    backend_name: str = "numba",
    max_messages: int = 100_000,
) -> tuple[AliceFrame, BobFrame]:
    """Run one frame between two in-process sides; returns both finished sides.

    ``tamper(direction, i, data)`` may alter message ``i`` travelling ``"a->b"`` or ``"b->a"``.
    """
    cfg = config or FiniteKeyConfig(q_tol=0.11)
    info = FrameInfo(frame_id, "test", n_test, qber, cfg)
    a_auth, b_auth = auth if auth is not None else (None, None)
    alice = AliceFrame(alice_key, info, auth=a_auth, backend_name=backend_name)
    bob = BobFrame(bob_key, info, seed=seed, auth=b_auth, backend_name=backend_name)
    data: bytes | None = bob.start()
    to_alice = True
    i = 0
    while data is not None and i < max_messages:
        direction = "b->a" if to_alice else "a->b"
        if tamper is not None:
            data = tamper(direction, i, data)
        i += 1
        try:
            data = alice.receive(data) if to_alice else bob.receive(data)
        except ProtocolError:
            break
        to_alice = not to_alice
    return alice, bob
