"""The ETSI GS QKD 014 V1.1.1 key delivery API of one KME, on aiohttp with mutual TLS.

Routes (§5): ``GET /api/v1/keys/{slave_SAE_ID}/status``,
``GET|POST /api/v1/keys/{slave_SAE_ID}/enc_keys`` and
``GET|POST /api/v1/keys/{master_SAE_ID}/dec_keys``. The calling SAE is the common
name of its client certificate (aiohttp hands the peer certificate to the handler;
a client without a certificate signed by the site's CA fails the TLS handshake).
Answers use the standard's JSON objects (§6: Status, Key container, Error) and codes:
400 a request to change, 401 an SAE not allowed for that pair, 503 the KME cannot
serve now (not enough key stored, store error).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kms._config import KmeConfig
from kms._errors import (
    KeyExhaustedError,
    KeyRequestError,
    KeyStoreError,
    KmsError,
    NotAuthorizedError,
)
from kms._store import KeyOp, KeyStore

log = logging.getLogger("qnet.kms")

_STATUS = {
    KeyRequestError: 400,
    NotAuthorizedError: 401,
    KeyExhaustedError: 503,
    KeyStoreError: 503,
}
_STORE_KEY: web.AppKey[KeyStore] = web.AppKey("store", KeyStore)
_CONFIG_KEY: web.AppKey[KmeConfig] = web.AppKey("config", KmeConfig)
_COUNTS_KEY: web.AppKey[Counter[str]] = web.AppKey("counts", Counter)
_COMMIT_KEY: web.AppKey[_GroupCommit] = web.AppKey("commit")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _GroupCommit:
    """Gathers the store operations that arrive while a commit runs into the next batch.

    One thread does the store's work, so requests never wait for each other's disk
    sync one by one: at high load each commit carries many requests (group commit).
    """

    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._pending: list[tuple[KeyOp, asyncio.Future[list[tuple[str, bytes]]]]] = []
        self._task: asyncio.Task[None] | None = None

    async def run(self, op: KeyOp) -> list[tuple[str, bytes]]:
        fut: asyncio.Future[list[tuple[str, bytes]]] = asyncio.get_running_loop().create_future()
        self._pending.append((op, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await asyncio.to_thread(self._store.batch, [op for op, _ in batch])
            except KmsError as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, KmsError):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)


def server_ssl_context(cfg: KmeConfig) -> ssl.SSLContext:
    """TLS >= 1.2, the KME's certificate, and a client certificate from the CA required."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(cfg.ca_cert))
        ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
    except (OSError, ssl.SSLError) as exc:
        raise KmsError(f"KME TLS files (ca_cert/cert/key): {exc}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _error(status: int, message: str, details: list[dict[str, Any]] | None = None) -> web.Response:
    body: dict[str, Any] = {"message": message}
    if details:
        body["details"] = details
    return web.json_response(body, status=status)


def _caller(request: web.Request) -> str:
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    raise NotAuthorizedError("no client certificate with a common name (the SAE ID)")


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    counts = request.app[_COUNTS_KEY]
    try:
        response = await handler(request)
    except KmsError as exc:
        status = _STATUS.get(type(exc), 503)
        counts[f"http_{status}"] += 1
        log.info("refused %s %s: %d %s", request.method, request.path, status, exc)
        return _error(status, str(exc))
    except web.HTTPRequestEntityTooLarge:
        counts["http_400"] += 1
        limit = request.app[_CONFIG_KEY].max_body_bytes
        return _error(400, f"request body larger than {limit} bytes")
    except web.HTTPException as exc:
        counts[f"http_{exc.status}"] += 1
        return _error(exc.status, exc.reason)
    counts[f"http_{response.status}"] += 1
    return response


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except web.HTTPRequestEntityTooLarge:
        raise
    except (ValueError, UnicodeDecodeError):
        raise KeyRequestError("request body is not JSON") from None
    if not isinstance(body, dict):
        raise KeyRequestError("request body must be a JSON object")
    return body


def _int_field(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise KeyRequestError(f"{name} must be an integer, got {str(value)[:40]!r}")
    try:
        out = int(value)
    except ValueError:
        raise KeyRequestError(f"{name} must be an integer, got {str(value)[:40]!r}") from None
    return out


def _status_object(cfg: KmeConfig, store: KeyStore, master: str, slave: str) -> dict[str, Any]:
    size_bytes = cfg.key_size_bits // 8
    return {
        "source_KME_ID": cfg.kme_id,
        "target_KME_ID": cfg.peer_kme_id,
        "master_SAE_ID": master,
        "slave_SAE_ID": slave,
        "key_size": cfg.key_size_bits,
        "stored_key_count": min(store.issuable_bytes(size_bytes) // size_bytes, cfg.max_key_count),
        "max_key_count": cfg.max_key_count,
        "max_key_per_request": cfg.max_keys_per_request,
        "max_key_size": cfg.max_key_size_bits,
        "min_key_size": cfg.min_key_size_bits,
        "max_SAE_ID_count": 0,
    }


async def _status(request: web.Request) -> web.Response:
    cfg, store = request.app[_CONFIG_KEY], request.app[_STORE_KEY]
    caller, slave = _caller(request), request.match_info["sae_id"]
    if cfg.pair_as_master(caller, slave) is None:
        raise NotAuthorizedError(f"SAE {caller!r} is not a master of SAE {slave!r} at this KME")
    status = await asyncio.to_thread(_status_object, cfg, store, caller, slave)
    return web.json_response(status)


def _container(keys: list[tuple[str, bytes]]) -> web.Response:
    return web.json_response(
        {"keys": [{"key_ID": kid, "key": base64.b64encode(k).decode()} for kid, k in keys]}
    )


async def _enc_keys(request: web.Request) -> web.Response:
    cfg, store = request.app[_CONFIG_KEY], request.app[_STORE_KEY]
    caller, slave = _caller(request), request.match_info["sae_id"]
    if cfg.pair_as_master(caller, slave) is None:
        raise NotAuthorizedError(f"SAE {caller!r} is not a master of SAE {slave!r} at this KME")
    if request.method == "POST":
        body = await _json_body(request)
        unknown = set(body) - {
            "number",
            "size",
            "additional_slave_SAE_IDs",
            "extension_mandatory",
            "extension_optional",
        }
        if unknown:
            raise KeyRequestError(f"unknown field(s) in the key request: {sorted(unknown)}")
        if body.get("additional_slave_SAE_IDs"):
            raise KeyRequestError("additional_slave_SAE_IDs: this KME serves one slave SAE per key")
        if body.get("extension_mandatory"):
            raise KeyRequestError("extension_mandatory: no extension is supported")
        number_raw: Any = body.get("number", 1)
        size_raw: Any = body.get("size", cfg.key_size_bits)
    else:
        number_raw = request.query.get("number", "1")
        size_raw = request.query.get("size", str(cfg.key_size_bits))
    number, size = _int_field(number_raw, "number"), _int_field(size_raw, "size")
    if not 1 <= number <= cfg.max_keys_per_request:
        raise KeyRequestError(f"number {number} outside 1..{cfg.max_keys_per_request}")
    if size % 8:
        raise KeyRequestError(f"size {size} bits is not a multiple of 8")
    if not cfg.min_key_size_bits <= size <= cfg.max_key_size_bits:
        raise KeyRequestError(
            f"size {size} bits outside {cfg.min_key_size_bits}..{cfg.max_key_size_bits}"
        )
    keys = await request.app[_COMMIT_KEY].run(store.issue_op(caller, slave, number, size // 8))
    log.info("enc_keys: %d keys of %d bits to SAE %s (slave %s)", number, size, caller, slave)
    return _container(keys)


async def _dec_keys(request: web.Request) -> web.Response:
    cfg, store = request.app[_CONFIG_KEY], request.app[_STORE_KEY]
    caller, master = _caller(request), request.match_info["sae_id"]
    if cfg.pair_as_slave(caller, master) is None:
        raise NotAuthorizedError(f"SAE {caller!r} is not a slave of SAE {master!r} at this KME")
    if request.method == "POST":
        body = await _json_body(request)
        entries = body.get("key_IDs")
        if not isinstance(entries, list) or not entries:
            raise KeyRequestError('key_IDs must be a non-empty list of {"key_ID": ...} objects')
        ids = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("key_ID"), str):
                raise KeyRequestError(f"key_IDs[{i}] has no key_ID string")
            ids.append(entry["key_ID"])
    else:
        ids = request.query.getall("key_ID", [])
        if not ids:
            raise KeyRequestError("the key_ID query parameter is missing")
    if len(ids) > cfg.max_keys_per_request:
        raise KeyRequestError(f"{len(ids)} key_IDs, at most {cfg.max_keys_per_request} a request")
    keys = await request.app[_COMMIT_KEY].run(store.deliver_op(master, caller, ids))
    log.info("dec_keys: %d keys to SAE %s (master %s)", len(keys), caller, master)
    return _container(keys)


def make_app(cfg: KmeConfig, store: KeyStore) -> web.Application:
    """The aiohttp application of one KME (the store is owned by the caller)."""
    app = web.Application(middlewares=[_errors], client_max_size=cfg.max_body_bytes)
    app[_CONFIG_KEY] = cfg
    app[_STORE_KEY] = store
    app[_COUNTS_KEY] = Counter()
    app[_COMMIT_KEY] = _GroupCommit(store)
    base = "/api/v1/keys/{sae_id}"
    app.router.add_get(f"{base}/status", _status)
    app.router.add_get(f"{base}/enc_keys", _enc_keys)
    app.router.add_post(f"{base}/enc_keys", _enc_keys)
    app.router.add_get(f"{base}/dec_keys", _dec_keys)
    app.router.add_post(f"{base}/dec_keys", _dec_keys)
    return app


@dataclass
class KmeServer:
    """A running KME: its URL, store and request counters; :meth:`stop` closes all."""

    cfg: KmeConfig
    store: KeyStore
    runner: web.AppRunner
    url: str
    counts: Counter[str]

    async def stop(self) -> None:
        """Stop serving and close the store."""
        await self.runner.cleanup()
        self.store.close()


async def start_kme(cfg: KmeConfig, store: KeyStore | None = None) -> KmeServer:
    """Serve ``cfg``'s KME on its host and port (0: a free one) until :meth:`KmeServer.stop`."""
    ctx = server_ssl_context(cfg)
    store = store or KeyStore(cfg.store, site_index=cfg.site_index)
    app = make_app(cfg, store)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port, ssl_context=ctx, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        store.close()
        raise KmsError(f"KME {cfg.kme_id}: cannot listen on {cfg.host}:{cfg.port}: {exc}") from exc
    server = getattr(site, "_server", None)
    port = server.sockets[0].getsockname()[1] if server and server.sockets else cfg.port
    return KmeServer(cfg, store, runner, f"https://{cfg.host}:{port}", app[_COUNTS_KEY])
