"""The loopback link between the two `qnet sim --site` processes of the two-site testbed.

The source, the fibre and Bob's polarization state are one physical system, so
the physics runs in one process (Alice's site, where the source is). Bob's
process serves Bob's instruments and tagger; its tagger asks Alice's process for
the next stretch of Bob's photons (already in Bob's own clock) and sends along
the state of Bob's instruments that acts on the photons (polarization
controller, detector bias, SPAD gate and dead time), so Bob's operator settings
reach the physics. Request/reply over ZeroMQ: one request per tagger frame.

This link is a test fixture of the emulator (the photons themselves), not the
node's classical channel: it carries detector outcomes and is not
authenticated. It listens on loopback only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from coincidence import TagBatch

#: Message version of the site link.
VERSION = 1
#: Largest stretch of simulated time one request may ask for, ps (10 s).
MAX_WANT_PS = 10 * 10**12


class SiteLinkError(ConnectionError):
    """The other site's simulator did not answer, or answered something unusable."""


def _loopback(address: str) -> str:
    """``address`` if it is a tcp address on 127.0.0.1 (or localhost); else ValueError."""
    if not address.startswith(("tcp://127.0.0.1:", "tcp://localhost:")):
        raise ValueError(f"site_link must be tcp://127.0.0.1:PORT (loopback), got {address!r}")
    return address


class SiteUplink:
    """Alice's side: answers Bob's tagger with Bob's photons (REP socket in a thread).

    Args:
        address: ``tcp://127.0.0.1:PORT`` to bind.
        handler: ``f(want_ps, state) -> (TagBatch, info)`` where ``state`` is Bob's
            instrument state and ``info`` a JSON-able dict (expected rates ...).
    """

    def __init__(
        self,
        address: str,
        handler: Callable[[int, dict[str, Any]], tuple[TagBatch, dict[str, Any]]],
    ) -> None:
        import zmq

        self.address = _loopback(address)
        self._handler = handler
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(self.address)
        self._stop = threading.Event()
        self.requests = 0
        self.refused = 0
        self._thread = threading.Thread(target=self._loop, daemon=True, name="sim-site-uplink")

    def start(self) -> SiteUplink:
        """Start answering; returns self."""
        self._thread.start()
        return self

    def _answer(self, frames: list[bytes]) -> list[bytes]:
        try:
            head = json.loads(frames[0].decode("utf-8")) if len(frames) == 1 else None
            if not isinstance(head, dict) or head.get("v") != VERSION:
                raise ValueError(f"expected one JSON request of version {VERSION}")
            want = head.get("want_ps")
            state = head.get("state", {})
            if not isinstance(want, int) or not 0 < want <= MAX_WANT_PS:
                raise ValueError(f"want_ps must be an integer in 1..{MAX_WANT_PS}, got {want!r}")
            if not isinstance(state, dict):
                raise ValueError("state must be a mapping")
            batch, info = self._handler(want, state)
        except Exception as exc:  # a refusal, never a dead uplink
            self.refused += 1
            return [json.dumps({"v": VERSION, "error": str(exc)}).encode()]
        self.requests += 1
        reply = {"v": VERSION, "begin_ps": batch.begin_ps, "end_ps": batch.end_ps, **info}
        return [
            json.dumps(reply).encode(),
            np.ascontiguousarray(batch.timestamps, "<i8").tobytes(),
            np.ascontiguousarray(batch.channels, np.uint8).tobytes(),
        ]

    def _loop(self) -> None:
        import zmq

        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            frames = self._sock.recv_multipart()
            self._sock.send_multipart(self._answer(frames))

    def stop(self) -> None:
        """Stop answering and close the socket; idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self._sock.close(0)
        self._ctx.term()


class SiteDownlink:
    """Bob's side: fetches the next stretch of Bob's photons from Alice's process.

    A request that gets no answer within ``timeout_s`` raises :class:`SiteLinkError`
    (the served tagger's stream then drops, as a real tagger's would) and the socket
    is replaced, so the next request starts clean (ZeroMQ's "lazy pirate" pattern).
    """

    def __init__(self, address: str, timeout_s: float = 10.0) -> None:
        import zmq

        self.address = _loopback(address)
        self.timeout_s = float(timeout_s)
        self._ctx = zmq.Context()
        self._sock: Any = None
        self._lock = threading.Lock()
        self.info: dict[str, Any] = {}
        self._zmq = zmq

    def _socket(self) -> Any:
        if self._sock is None:
            s = self._ctx.socket(self._zmq.REQ)
            s.setsockopt(self._zmq.LINGER, 0)
            s.setsockopt(self._zmq.RCVTIMEO, round(self.timeout_s * 1000))
            s.connect(self.address)
            self._sock = s
        return self._sock

    def take(self, want_ps: int, state: dict[str, Any]) -> TagBatch:
        """The next ``want_ps`` (at least) of Bob's stream; SiteLinkError if unanswered."""
        head = json.dumps({"v": VERSION, "want_ps": int(want_ps), "state": state}).encode()
        with self._lock:
            sock = self._socket()
            try:
                sock.send(head)
                frames = sock.recv_multipart()
            except self._zmq.ZMQError as exc:
                sock.close(0)
                self._sock = None
                raise SiteLinkError(
                    f"the Alice-site simulator at {self.address} did not answer within "
                    f"{self.timeout_s:g} s ({exc}); is `qnet sim --site alice` running?"
                ) from None
        try:
            reply = json.loads(frames[0].decode("utf-8"))
        except ValueError:
            raise SiteLinkError(f"{self.address}: the reply is not JSON") from None
        if "error" in reply:
            raise SiteLinkError(f"{self.address} refused the request: {reply['error']}")
        if len(frames) != 3:
            raise SiteLinkError(f"{self.address}: expected 3 reply frames, got {len(frames)}")
        ts = np.frombuffer(frames[1], "<i8").astype(np.int64)
        ch = np.frombuffer(frames[2], np.uint8).copy()
        self.info = {k: v for k, v in reply.items() if k not in ("v", "begin_ps", "end_ps")}
        return TagBatch(ts, ch, int(reply["begin_ps"]), int(reply["end_ps"]))

    def close(self) -> None:
        """Close the socket; idempotent."""
        with self._lock:
            if self._sock is not None:
                self._sock.close(0)
                self._sock = None
        self._ctx.term()


__all__ = ["MAX_WANT_PS", "VERSION", "SiteDownlink", "SiteLinkError", "SiteUplink"]
