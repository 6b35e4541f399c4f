"""The key store of a node and its ETSI GS QKD 014 key delivery API.

Distilled blocks go into a :class:`KeyStore` (identical at both sites); SAEs fetch
keys through :func:`start_kme`'s REST API with mutual TLS. ``kms.testing`` runs a
KME pair in background threads for tests, benchmarks and the demo.
"""

from kms._config import KmeConfig, SaePair
from kms._errors import (
    KeyExhaustedError,
    KeyRequestError,
    KeyStoreError,
    KmsConfigError,
    KmsError,
    NotAuthorizedError,
)
from kms._keyid import KeyRange, check_key_id, make_key_id, parse_key_id
from kms._pki import Identity, TestPki, make_test_pki
from kms._server import KmeServer, make_app, server_ssl_context, start_kme
from kms._store import KeyStore, StoreStats

__all__ = [
    "Identity",
    "KeyExhaustedError",
    "KeyRange",
    "KeyRequestError",
    "KeyStore",
    "KeyStoreError",
    "KmeConfig",
    "KmeServer",
    "KmsConfigError",
    "KmsError",
    "NotAuthorizedError",
    "SaePair",
    "StoreStats",
    "TestPki",
    "check_key_id",
    "make_app",
    "make_key_id",
    "make_test_pki",
    "parse_key_id",
    "server_ssl_context",
    "start_kme",
]
