"""The key service's exception tree: one base, one class per thing an SAE or operator fixes."""

from __future__ import annotations


class KmsError(Exception):
    """Base of every error raised by :mod:`kms`."""


class KmsConfigError(KmsError):
    """A KME configuration that cannot work (names the key and the value)."""


class KeyRequestError(KmsError):
    """A request an SAE must change: answered with HTTP 400 and the standard's error object."""


class NotAuthorizedError(KmsError):
    """The calling SAE may not do this for that SAE pair: answered with HTTP 401."""


class KeyExhaustedError(KmsError):
    """Not enough key material stored right now: answered with HTTP 503 (retry later)."""


class KeyStoreError(KmsError):
    """The store on disk refused an operation (full disk, corrupt file): HTTP 503."""
