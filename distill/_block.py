"""The finished key block: what the key store keeps and both sites hold identically."""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import DistillInputError


@dataclass(frozen=True)
class LeakAccount:
    """Every bit of the key budget spent or disclosed on a frame, in bits.

    Attributes:
        error_correction: parity bits Alice disclosed during reconciliation.
        verification: bits of the verification tag disclosed.
        authentication: secret bits the message authentication consumed from the
            key pool (returned to the pool out of this block's amplified key).
        finite_size: ``log2(2 / (eps_sec^2 eps_cor))``, the finite-key security cost.
    """

    error_correction: int
    verification: int
    authentication: int
    finite_size: float

    @property
    def disclosed(self) -> int:
        """Bits an eavesdropper learned from the public discussion (EC + verification)."""
        return self.error_correction + self.verification


@dataclass(frozen=True)
class KeyBlock:
    """A finished secret key block, identical at both sites.

    Attributes:
        block_id: identifier both sites agree on (``"<link>/<frame>"`` or similar).
        key: the key bytes (``length_bits`` bits, big-endian bit order, zero padded).
        length_bits: number of key bits.
        qber: QBER estimated on the disclosed sample (the frame's measured value).
        qber_tolerated: the tolerated QBER fixed in advance that the key length uses.
        sifted_bits: sifted key bits that entered error correction (after the sample).
        leak: the leak accounting of the frame.
        epsilon: total security parameter (``eps_sec + eps_cor``): the key is
            epsilon-close to ideal (composable, Tomamichel et al. 2012).
    """

    block_id: str
    key: bytes
    length_bits: int
    qber: float
    qber_tolerated: float
    sifted_bits: int
    leak: LeakAccount
    epsilon: float

    def __post_init__(self) -> None:
        if self.length_bits < 0 or len(self.key) != -(-self.length_bits // 8):
            raise DistillInputError(
                f"key block {self.block_id!r}: {len(self.key)} bytes cannot hold "
                f"{self.length_bits} bits"
            )

    def __repr__(self) -> str:  # never print key material
        return (
            f"KeyBlock(block_id={self.block_id!r}, length_bits={self.length_bits}, "
            f"qber={self.qber:.4f}, epsilon={self.epsilon:.1e})"
        )
