"""One frame's reconciliation, verification and amplification, per side, as bytes in / bytes out.

Bob drives: ``BobFrame.start()`` gives the first message; each side's
``receive(data)`` returns the bytes to send back (or ``None``). The exchange:

1. EcStart -> ParityReply -> (ParityQuery -> ParityReply)* -> EcDone   (Cascade)
2. Alice, after EcDone: VerifyTag (a fresh public hash key drawn *after* Bob's
   key is fixed, her 64-bit tag, her leak count and the amplification seed)
3. Bob: VerifyResult (his own tag; ok if Alice's tag and leak count equal his)

Each side delivers only when the *other* side's tag equals its own tag of its
own key and the leak counts agree, so a tampered parity, syndrome or tag can
make the frame be discarded but never make the two sides keep different keys
(up to the hash's collision probability, which is the protocol's eps_cor). A
side that raised :class:`ProtocolError` has discarded the frame and refuses
further messages.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._auth import Authenticator, ChannelAuth, WegmanCarterAuth
from ._bits import poly_hash64
from ._block import KeyBlock, LeakAccount
from ._cascade import CascadeAlice, CascadeBob, CascadeParams
from ._errors import DistillError, DistillInputError, ProtocolError
from ._finite import FiniteKeyConfig, secret_key_length
from ._messages import (
    EcDone,
    EcStart,
    Message,
    ParityQuery,
    ParityReply,
    VerifyResult,
    VerifyTag,
    decode,
    encode,
)
from ._toeplitz import toeplitz_hash, toeplitz_seed

TAG_BITS = 64


@dataclass(frozen=True)
class FrameInfo:
    """What both sides agreed before reconciliation (from parameter estimation).

    Attributes:
        frame_id: the frame's number on the link.
        link: the link's name (prefix of the block ids).
        n_test: sample bits disclosed for the QBER estimate.
        qber: the sample's QBER (sets Cascade's block sizes and is reported).
        config: the finite-key parameters fixed in advance.
    """

    frame_id: int
    link: str
    n_test: int
    qber: float
    config: FiniteKeyConfig


def hash_collision_bound(n_bits: int) -> float:
    """Collision probability of the verification tag of ``n_bits``-bit keys: ``(L + 1) / 2^64``.

    ``L`` counts the 64-bit words hashed: the key and the two bound fields.
    """
    return (-(-(n_bits + 128) // 64) + 1) / 2.0**64


def verification_tag(key: np.ndarray, hash_key: int, leak_ec: int, pa_seed: int) -> int:
    """64-bit tag binding the reconciled key, the leak count and the amplification seed.

    Binding the seed and the leak means a change to either in transit makes the
    two sides' tags differ, so both discard instead of amplifying differently.
    """
    data = np.packbits(np.asarray(key, np.uint8)).tobytes() + struct.pack("<QQ", leak_ec, pa_seed)
    return poly_hash64(data, hash_key)


class _Frame:
    """State shared by both sides: authentication, outcome, leak and the final block."""

    def __init__(self, key: np.ndarray, info: FrameInfo, auth: Authenticator | None) -> None:
        self.info = info
        self.auth: Authenticator = auth if auth is not None else ChannelAuth()
        self.auth.begin()
        self._auth_start = self.auth.consumed_bits
        self.state = "running"
        self.reason = ""
        self.block: KeyBlock | None = None
        self.n = int(np.asarray(key).size)
        if hash_collision_bound(self.n) > info.config.eps_cor:
            raise DistillInputError(
                f"eps_cor {info.config.eps_cor:g} is below the verification hash's collision "
                f"probability {hash_collision_bound(self.n):.2g} for {self.n}-bit frames"
            )

    def _expect_final(self) -> bool:
        return False

    def _open(self, data: bytes) -> Message:
        if self.state != "running":
            raise ProtocolError(f"frame {self.info.frame_id} is {self.state}: message refused")
        try:
            return decode(self.auth.open(data, final=self._expect_final()))
        except ProtocolError as e:
            self._discard(str(e))
            raise
        except DistillError as e:  # e.g. the authentication key pool ran out
            self._discard(str(e))
            raise ProtocolError(f"frame {self.info.frame_id} discarded: {e}") from None

    def _seal(self, msg: Message) -> bytes:
        final = isinstance(msg, VerifyTag | VerifyResult)
        return self.auth.seal(encode(msg), final=final)

    def _discard(self, reason: str) -> None:
        self.state = "discarded"
        self.reason = reason
        self.block = None

    def _finish(self, corrected: np.ndarray, leak_ec: int, pa_seed: int) -> None:
        cfg = self.info.config
        ell = secret_key_length(self.n, self.info.n_test, leak_ec, TAG_BITS, cfg)
        auth_bits = self.auth.consumed_bits - self._auth_start
        auth_bits = -(-auth_bits // 8) * 8
        leak = LeakAccount(leak_ec, TAG_BITS, auth_bits, cfg.finite_size_cost_bits)
        self.state = "delivered"
        if ell < 2 or ell >= self.n:
            self.block = None
            self.reason = f"finite-key length {ell} leaves no key"
            self.state = "empty"
            return
        amplified = toeplitz_hash(corrected, toeplitz_seed(self.n, ell, pa_seed), ell)
        if isinstance(self.auth, WegmanCarterAuth):
            refill = np.packbits(amplified[:auth_bits]).tobytes()
            self.auth.pool.add(refill)
            amplified = amplified[auth_bits:]
        length = int(amplified.size)
        if length <= 0:
            self.reason = "the amplified key only replaced the authentication key"
            self.state = "empty"
            return
        self.block = KeyBlock(
            block_id=f"{self.info.link}/{self.info.frame_id}",
            key=np.packbits(amplified).tobytes(),
            length_bits=length,
            qber=float(self.info.qber),
            qber_tolerated=cfg.q_tol,
            sifted_bits=self.n,
            leak=leak,
            epsilon=cfg.eps_sec + cfg.eps_cor,
        )


class AliceFrame(_Frame):
    """Alice: answers parity queries, then sends the verification tag; her key is the reference."""

    def __init__(
        self,
        key: np.ndarray,
        info: FrameInfo,
        *,
        auth: Authenticator | None = None,
        random_bits: Callable[[int], int] = secrets.randbits,
        backend_name: str = "numba",
    ) -> None:
        super().__init__(key, info, auth)
        self.cascade = CascadeAlice(key, frame_id=info.frame_id, backend_name=backend_name)
        self._random_bits = random_bits
        self._tag: int | None = None
        self._pa_seed = 0

    def _expect_final(self) -> bool:
        return self._tag is not None

    def receive(self, data: bytes) -> bytes | None:
        """A message from Bob -> the bytes to answer with (``None`` when the frame is over)."""
        msg = self._open(data)
        try:
            return self._handle(msg)
        except DistillError as e:
            self._discard(str(e))
            raise ProtocolError(f"frame {self.info.frame_id} discarded: {e}") from None

    def _handle(self, msg: Message) -> bytes | None:
        if isinstance(msg, EcStart | ParityQuery | EcDone) and self._tag is None:
            reply = self.cascade.handle(msg)
            if reply is not None:
                return self._seal(reply)
            hash_key = self._random_bits(64)
            self._pa_seed = self._random_bits(64)
            leak = self.cascade.leak_bits
            self._tag = verification_tag(self.cascade.key, hash_key, leak, self._pa_seed)
            return self._seal(
                VerifyTag(
                    self.info.frame_id, hash_key, self._tag, self.cascade.leak_bits, self._pa_seed
                )
            )
        if isinstance(msg, VerifyResult) and self._tag is not None:
            if msg.frame_id != self.info.frame_id:
                raise ProtocolError(f"VerifyResult for frame {msg.frame_id}")
            if not msg.ok or msg.tag != self._tag:
                self._discard("verification failed: Bob's key differs (or the result was tampered)")
                return None
            self._finish(self.cascade.key, self.cascade.leak_bits, self._pa_seed)
            return None
        raise ProtocolError(f"unexpected {type(msg).__name__} at this point of the frame")


class BobFrame(_Frame):
    """Bob: drives Cascade, checks Alice's tag against his corrected key, answers with his tag."""

    def __init__(
        self,
        key: np.ndarray,
        info: FrameInfo,
        *,
        seed: int,
        auth: Authenticator | None = None,
        params: CascadeParams | None = None,
        prefer: str = "leak",
        backend_name: str = "numba",
    ) -> None:
        super().__init__(key, info, auth)
        q = min(max(info.qber, 1e-3), 0.25)
        self.cascade = CascadeBob(
            key,
            frame_id=info.frame_id,
            seed=seed,
            qber=q,
            params=params,
            prefer=prefer,
            backend_name=backend_name,
        )

    def start(self) -> bytes:
        """The first message of the frame."""
        return self._seal(self.cascade.start())

    def _expect_final(self) -> bool:
        return self.cascade.done

    def receive(self, data: bytes) -> bytes | None:
        """A message from Alice -> the bytes to answer with."""
        msg = self._open(data)
        try:
            return self._handle(msg)
        except DistillError as e:
            self._discard(str(e))
            raise ProtocolError(f"frame {self.info.frame_id} discarded: {e}") from None

    def _handle(self, msg: Message) -> bytes | None:
        if isinstance(msg, ParityReply) and not self.cascade.done:
            return self._seal(self.cascade.handle(msg))
        if isinstance(msg, VerifyTag) and self.cascade.done:
            if msg.frame_id != self.info.frame_id:
                raise ProtocolError(f"VerifyTag for frame {msg.frame_id}")
            corrected = self.cascade.corrected
            mine = verification_tag(corrected, msg.hash_key, msg.leak_ec, msg.pa_seed)
            ok = mine == msg.tag and msg.leak_ec == self.cascade.leak_bits
            out = self._seal(VerifyResult(self.info.frame_id, mine, ok))
            if ok:
                self._finish(corrected, self.cascade.leak_bits, msg.pa_seed)
            else:
                why = "tags differ" if mine != msg.tag else "leak counts differ"
                self._discard(f"verification failed: {why}; frame discarded")
            return out
        raise ProtocolError(f"unexpected {type(msg).__name__} at this point of the frame")
