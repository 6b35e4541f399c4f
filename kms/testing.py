"""Helpers shared by the tests, the benchmarks and the demo: a KME pair on loopback.

:func:`kme_pair_configs` writes a test PKI and two KME configs (site 0 ``kme-a`` with
the master SAE, site 1 ``kme-b`` with the slave SAE); :class:`KmeThread` serves one KME
from a background thread with its own event loop (a real aiohttp server with TLS).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path

from kms._config import KmeConfig, SaePair
from kms._pki import TestPki, make_test_pki
from kms._server import KmeServer, start_kme

MASTER_SAE = "sae-master"
SLAVE_SAE = "sae-slave"


def kme_pair_configs(directory: str | Path) -> tuple[KmeConfig, KmeConfig, TestPki]:
    """Configs of two KMEs on free loopback ports and the PKI they and their SAEs use."""
    out = Path(directory)
    pki = make_test_pki(out / "pki", ["kme-a", "kme-b", MASTER_SAE, SLAVE_SAE, "sae-stranger"])
    pairs = [SaePair(master=MASTER_SAE, slave=SLAVE_SAE)]
    a = KmeConfig(
        kme_id="kme-a",
        peer_kme_id="kme-b",
        site_index=0,
        store=out / "kme-a.sqlite",
        cert=pki["kme-a"].cert,
        key=pki["kme-a"].key,
        local_saes=[MASTER_SAE],
        ca_cert=pki.ca_cert,
        pairs=pairs,
        port=0,
    )
    b = KmeConfig(
        kme_id="kme-b",
        peer_kme_id="kme-a",
        site_index=1,
        store=out / "kme-b.sqlite",
        cert=pki["kme-b"].cert,
        key=pki["kme-b"].key,
        local_saes=[SLAVE_SAE],
        ca_cert=pki.ca_cert,
        pairs=pairs,
        port=0,
    )
    return a, b, pki


def sae_ssl_context(pki: TestPki, sae: str) -> ssl.SSLContext:
    """A client TLS context that trusts the test CA and presents ``sae``'s certificate."""
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki[sae].cert), str(pki[sae].key))
    return ctx


class KmeThread:
    """Serve one KME from a daemon thread; ``with KmeThread(cfg) as kme: kme.url``."""

    def __init__(self, cfg: KmeConfig) -> None:
        self.cfg = cfg
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.server: KmeServer | None = None

    def __enter__(self) -> KmeThread:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(start_kme(self.cfg), self._loop)
        self.server = fut.result(timeout=60)
        return self

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT`` of the running KME."""
        assert self.server is not None
        return self.server.url

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
