"""Key delivery benchmark: ETSI GS QKD 014 ``enc_keys`` requests over mutual TLS on loopback.

A KME (``qnet kme``, its own process) serves one master SAE from a store of 8 MB of key.
``CONCURRENCY`` clients on keep-alive HTTPS connections (aiohttp) each ask for one
256-bit key at a time until ``N_REQUESTS`` are answered. Figures: requests/s and the
p99 reply latency (targets >= 500/s, p99 < 50 ms). Baseline, same run, same server and
connections: ``GET .../status`` (TLS, routing, JSON, no store transaction), so the row
shows what the durable store transaction adds. Then the slave SAE fetches every key
through ``dec_keys`` at the other KME and the keys are compared.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import yaml

from benchmarks._harness import Row
from drivers.sim import free_port
from kms import KeyStore
from kms.testing import MASTER_SAE, SLAVE_SAE, kme_pair_configs, sae_ssl_context

N_REQUESTS = 4000
CONCURRENCY = 16
BLOCKS = 8
BLOCK_BYTES = 1 << 20


def _serve(cfg_path: Path, url: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "kme", str(cfg_path)],
        stdout=subprocess.DEVNULL,
    )
    return proc


async def _wait_up(url: str, ctx: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url, ssl=ctx) as r:
                    await r.read()
                    return
            except aiohttp.ClientError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


async def _load(url: str, ctx: object, n: int) -> tuple[float, np.ndarray, list[dict[str, str]]]:
    latencies: list[float] = []
    keys: list[dict[str, str]] = []
    left = n
    conn = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=conn) as http:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                async with http.get(url, ssl=ctx) as r:
                    body = await r.json()
                    if r.status != 200:
                        raise RuntimeError(f"{url}: HTTP {r.status} {body}")
                latencies.append(time.perf_counter() - t0)
                keys.extend(body.get("keys", []))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - t0
    return elapsed, np.array(latencies), keys


async def _dec_all(url: str, ctx: object, keys: list[dict[str, str]]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    async with aiohttp.ClientSession() as http:
        for i in range(0, len(keys), 100):
            ids = {"key_IDs": [{"key_ID": k["key_ID"]} for k in keys[i : i + 100]]}
            async with http.post(url, json=ids, ssl=ctx) as r:
                out.extend((await r.json())["keys"])
    return out


def run() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="qnet-bench-kms-") as tmp:
        cfg_a, cfg_b, pki = kme_pair_configs(tmp)
        cfg_a = cfg_a.model_copy(update={"port": free_port()})
        cfg_b = cfg_b.model_copy(update={"port": free_port()})
        blocks = [os.urandom(BLOCK_BYTES) for _ in range(BLOCKS)]
        procs = []
        try:
            for cfg in (cfg_a, cfg_b):
                store = KeyStore(cfg.store, site_index=cfg.site_index)
                for i, key in enumerate(blocks):
                    store.add_block(i, key)
                store.close()
                path = Path(tmp) / f"{cfg.kme_id}.yaml"
                path.write_text(yaml.safe_dump({"kme": cfg.model_dump(mode="json")}))
                procs.append(_serve(path, f"https://127.0.0.1:{cfg.port}"))
            ctx_m = sae_ssl_context(pki, MASTER_SAE)
            ctx_s = sae_ssl_context(pki, SLAVE_SAE)
            base_a = f"https://127.0.0.1:{cfg_a.port}/api/v1/keys"
            base_b = f"https://127.0.0.1:{cfg_b.port}/api/v1/keys"
            status_url = f"{base_a}/{SLAVE_SAE}/status"
            asyncio.run(_wait_up(status_url, ctx_m))
            asyncio.run(_wait_up(f"{base_b}/{MASTER_SAE}/dec_keys?key_ID=x", ctx_s))
            s_el, s_lat, _ = asyncio.run(_load(status_url, ctx_m, N_REQUESTS))
            e_el, e_lat, keys = asyncio.run(
                _load(f"{base_a}/{SLAVE_SAE}/enc_keys?number=1&size=256", ctx_m, N_REQUESTS)
            )
            dec = asyncio.run(_dec_all(f"{base_b}/{MASTER_SAE}/dec_keys", ctx_s, keys))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
    rate = N_REQUESTS / e_el
    p99_ms = float(np.percentile(e_lat, 99) * 1e3)
    same = dec == keys and len({k["key_ID"] for k in keys}) == N_REQUESTS
    note = f"{CONCURRENCY} keep-alive TLS connections, one 256-bit key a request"
    return [
        Row(
            "KME enc_keys requests/s (mutual TLS, durable store)",
            rate,
            "req/s",
            target=">= 500/s",
            ok=rate >= 500,
            baseline=N_REQUESTS / s_el,
            baseline_name="GET status, same server",
            notes=note,
        ),
        Row(
            "KME enc_keys p99 latency",
            p99_ms,
            "ms",
            target="< 50 ms",
            ok=p99_ms < 50,
            baseline=float(np.percentile(s_lat, 99) * 1e3),
            baseline_name="GET status p99",
            notes=f"p50 {np.percentile(e_lat, 50) * 1e3:.1f} ms; {note}",
        ),
        Row(
            "dec_keys at the other KME returns the same keys",
            float(same),
            "bool",
            target="1",
            ok=same,
            notes=f"{len(dec)} of {N_REQUESTS} keys compared",
        ),
    ]
