"""Key distillation: sifting, error correction, verification, privacy amplification."""
