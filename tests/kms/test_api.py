"""The ETSI GS QKD 014 API over real HTTPS with client certificates (curl and aiohttp)."""

import json
import os
import ssl
import subprocess

import pytest

from kms import KeyStore
from kms.testing import MASTER_SAE, SLAVE_SAE, KmeThread, kme_pair_configs


@pytest.fixture(scope="module")
def link(tmp_path_factory):
    """Two KMEs whose stores hold the same 8 blocks, serving on loopback."""
    tmp = tmp_path_factory.mktemp("kms")
    cfg_a, cfg_b, pki = kme_pair_configs(tmp)
    blocks = {i: os.urandom(8192) for i in range(8)}
    for cfg in (cfg_a, cfg_b):
        store = KeyStore(cfg.store, site_index=cfg.site_index)
        for block_id, key in blocks.items():
            store.add_block(block_id, key)
        store.close()
    with KmeThread(cfg_a) as a, KmeThread(cfg_b) as b:
        yield a, b, pki


def curl(url, pki, sae, *, data=None, method=None):
    """Run curl as SAE ``sae`` (None: no client certificate); (status, parsed body or None)."""
    cmd = ["curl", "-sS", "--max-time", "30", "--cacert", str(pki.ca_cert)]
    if sae is not None:
        cmd += ["--cert", str(pki[sae].cert), "--key", str(pki[sae].key)]
    if data is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    if method:
        cmd += ["-X", method]
    cmd += ["-w", "\n%{http_code}", url]
    res = subprocess.run(cmd, input=data, capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        return res.returncode, res.stderr
    body, _, code = res.stdout.rpartition("\n")
    return int(code), json.loads(body) if body else None


def test_master_key_reaches_the_slave_at_the_other_site_and_no_one_else(link):
    a, b, pki = link
    status, body = curl(
        f"{a.url}/api/v1/keys/{SLAVE_SAE}/enc_keys?number=3&size=256", pki, MASTER_SAE
    )
    assert status == 200, body
    keys = body["keys"]
    assert len(keys) == 3 and all(len(k["key"]) == 44 for k in keys)  # 32 bytes in base64
    ids = {"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]}
    # The master SAE cannot use dec_keys, nor can a stranger; the slave can, once.
    url_dec = f"{b.url}/api/v1/keys/{MASTER_SAE}/dec_keys"
    assert curl(url_dec, pki, MASTER_SAE, data=json.dumps(ids))[0] == 401
    assert curl(url_dec, pki, "sae-stranger", data=json.dumps(ids))[0] == 401
    status, got = curl(url_dec, pki, SLAVE_SAE, data=json.dumps(ids))
    assert status == 200, got
    assert got["keys"] == keys
    status, again = curl(url_dec, pki, SLAVE_SAE, data=json.dumps(ids))
    assert status == 400 and "delivered already" in again["message"]
    # GET with one key_ID, and POST enc_keys with the Key request object.
    status, body = curl(
        f"{a.url}/api/v1/keys/{SLAVE_SAE}/enc_keys",
        pki,
        MASTER_SAE,
        data=json.dumps({"number": 1, "size": 512}),
    )
    assert status == 200 and len(body["keys"]) == 1
    kid = body["keys"][0]["key_ID"]
    status, got = curl(f"{url_dec}?key_ID={kid}", pki, SLAVE_SAE)
    assert status == 200 and got["keys"] == body["keys"]


def test_status_object(link):
    a, _, pki = link
    status, body = curl(f"{a.url}/api/v1/keys/{SLAVE_SAE}/status", pki, MASTER_SAE)
    assert status == 200
    assert body["source_KME_ID"] == "kme-a" and body["target_KME_ID"] == "kme-b"
    assert body["master_SAE_ID"] == MASTER_SAE and body["slave_SAE_ID"] == SLAVE_SAE
    assert body["key_size"] == 256 and body["stored_key_count"] > 0
    for field in ("max_key_count", "max_key_per_request", "max_key_size", "min_key_size"):
        assert isinstance(body[field], int)
    assert curl(f"{a.url}/api/v1/keys/{SLAVE_SAE}/status", pki, SLAVE_SAE)[0] == 401


def test_no_or_foreign_certificate_is_refused_at_the_handshake(link, tmp_path):
    a, _, pki = link
    url = f"{a.url}/api/v1/keys/{SLAVE_SAE}/status"
    code, err = curl(url, pki, None)
    assert code not in (200, 401) and isinstance(err, str)  # curl fails: no HTTP answer
    from kms import make_test_pki

    other = make_test_pki(tmp_path / "other", ["sae-master"])
    code, err = curl(url, other, "sae-master")
    assert isinstance(err, str) and code != 0


@pytest.mark.parametrize(
    ("path", "data", "status", "message"),
    [
        ("enc_keys?size=100", None, 400, "not a multiple of 8"),
        ("enc_keys?number=0", None, 400, "number 0 outside"),
        ("enc_keys?number=129", None, 400, "number 129 outside"),
        ("enc_keys?number=x", None, 400, "number must be an integer"),
        ("enc_keys?size=8", None, 400, "size 8 bits outside"),
        ("enc_keys", "{not json", 400, "not JSON"),
        ("enc_keys", "[1]", 400, "JSON object"),
        ("enc_keys", '{"number": true}', 400, "number must be an integer"),
        ("enc_keys", '{"additional_slave_SAE_IDs": ["x"]}', 400, "one slave SAE"),
        ("enc_keys", '{"extension_mandatory": [{"x": 1}]}', 400, "no extension"),
        ("enc_keys", '{"nmber": 1}', 400, "unknown field"),
        ("enc_keys?number=128&size=4096", None, 503, "available now"),
    ],
)
def test_malformed_enc_requests_get_error_objects(link, path, data, status, message):
    a, _, pki = link
    got_status, body = curl(f"{a.url}/api/v1/keys/{SLAVE_SAE}/{path}", pki, MASTER_SAE, data=data)
    assert got_status == status, body
    assert message in body["message"]


def test_malformed_dec_requests_and_oversized_bodies(link):
    _a, b, pki = link
    url_dec = f"{b.url}/api/v1/keys/{MASTER_SAE}/dec_keys"
    for data, message in [
        ('{"key_IDs": []}', "non-empty list"),
        ('{"key_IDs": [{"id": 1}]}', "key_IDs[0] has no key_ID"),
        ('{"key_IDs": [{"key_ID": "nope"}]}', "not a UUID"),
        ('{"key_IDs": [{"key_ID": "6f1c1d0e-2b6a-4c43-9d7e-1a2b3c4d5e6f"}]}', "not issued"),
    ]:
        status, body = curl(url_dec, pki, SLAVE_SAE, data=data)
        assert status == 400 and message in body["message"], body
    assert curl(url_dec, pki, SLAVE_SAE)[0] == 400  # GET without key_ID
    big = json.dumps({"key_IDs": [{"key_ID": "x" * 100}] * 2000})
    status, body = curl(url_dec, pki, SLAVE_SAE, data=big)
    assert status == 400 and "larger than" in body["message"]
    # Wrong SAE in the path: the slave asks for keys of a master it is not paired with.
    status, body = curl(f"{b.url}/api/v1/keys/sae-stranger/dec_keys?key_ID=x", pki, SLAVE_SAE)
    assert status == 401 and "not a slave" in body["message"]


def test_aiohttp_client_round_trip(link):
    """A second real HTTPS client (aiohttp's) sees the same API."""
    import asyncio

    import aiohttp

    from kms.testing import sae_ssl_context

    a, b, pki = link

    async def run():
        ctx_m: ssl.SSLContext = sae_ssl_context(pki, MASTER_SAE)
        ctx_s = sae_ssl_context(pki, SLAVE_SAE)
        async with aiohttp.ClientSession() as http:
            r = await http.get(f"{a.url}/api/v1/keys/{SLAVE_SAE}/enc_keys?number=2", ssl=ctx_m)
            enc = await r.json()
            ids = {"key_IDs": [{"key_ID": k["key_ID"]} for k in enc["keys"]]}
            r = await http.post(f"{b.url}/api/v1/keys/{MASTER_SAE}/dec_keys", json=ids, ssl=ctx_s)
            return enc, await r.json()

    enc, dec = asyncio.run(run())
    assert enc["keys"] == dec["keys"]
