"""The QKD link dashboard's InfluxQL, run against a real InfluxDB 1.x loaded with link records.

The records are those of a two-site link (both nodes, a minute of one-second windows, the
clock acquiring then locked, key delivered), built with the telemetry schema's own
constructors and codec, so a renamed measurement or field fails here.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
import urllib.request

import pytest

import telemetry
from controller.testing.pipeline import REPO

pytestmark = [pytest.mark.servers]

DASHBOARD = REPO / "configs/grafana/dashboards/qkd-link.json"
LINK = "alice-bob"
T0 = 1_780_000_000 * 10**9  # whole seconds


def _query(url: str, q: str) -> dict:
    body = urllib.parse.urlencode({"db": "qnet", "q": q, "epoch": "ns"}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{url}/query", data=body), timeout=10) as r:
        return json.loads(r.read())


def link_records(seconds: int = 60) -> list[telemetry.Record]:
    """What both sites of a link report, once a second: acquiring for 15 s, then locked."""
    out = []
    for k in range(seconds):
        t = T0 + k * 10**9
        locked = k >= 15
        for node, role, sign in (("alice", "sender", 1), ("bob", "analyser", -1)):
            fields: dict = {
                "channel_tx_bytes_per_s": 3.1e4 if node == "alice" else 2.2e3,
                "channel_rx_bytes_per_s": 2.2e3 if node == "alice" else 3.1e4,
                "channel_connected": True,
                "epochs": 2 * k,
                "sifted_bits": 2_500 * max(0, k - 15),
                "sifted_bps": 2_500.0 if locked else 0.0,
                "store_blocks": max(0, k - 15) // 4,
                "store_issuable_bytes": 512 * (max(0, k - 15) // 4),
                "delivered_keys": k // 10,
            }
            if locked:
                fields.update(
                    offset_ps=sign * (-7.3e11 + 4.1e-5 * k * 1e12),
                    offset_uncertainty_ps=120.0,
                    ppm=sign * -41.0,
                    ppm_uncertainty=0.02,
                    qber_z=0.011,
                    qber_z_low=0.007,
                    qber_z_high=0.016,
                    qber_x=0.013,
                    qber_x_low=0.009,
                    qber_x_high=0.018,
                    secret_bps=900.0,
                    ec_efficiency=1.06,
                )
            out.append(
                telemetry.link(
                    node=node,
                    link=LINK,
                    role=role,
                    lock_state="locked" if locked else "acquiring",
                    time_ns=t,
                    **fields,
                )
            )
    return out


@pytest.fixture(scope="module")
def loaded(influxdb1):
    _query(influxdb1.url, "CREATE DATABASE qnet")
    text = telemetry.to_lines(link_records())
    req = urllib.request.Request(
        f"{influxdb1.url}/write?db=qnet&precision=ns", data=text.encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 204
    return influxdb1


def _targets(panels):
    for p in panels:
        yield from _targets(p.get("panels", []))
        for t in p.get("targets", []):
            yield p["title"], t


def _substitute(q: str, variables: dict[str, str]) -> str:
    t1 = T0 + 61 * 10**9
    q = q.replace("$timeFilter", f"time >= {T0 // 10**6}ms and time <= {t1 // 10**6}ms")
    q = q.replace("$__interval", "10s")
    for name, value in variables.items():
        q = q.replace(f"${name}", value)
    assert "$" not in q.replace("/^", "").replace("$/", ""), q
    return q


def _series(result: dict) -> list[dict]:
    res = result["results"][0]
    assert "error" not in res, res["error"]
    return res.get("series", [])


def _run_dashboard(server) -> dict[str, list[dict]]:
    dash = json.loads(DASHBOARD.read_text())
    variables: dict[str, str] = {}
    for var in dash["templating"]["list"]:
        series = _series(_query(server.url, _substitute(var["query"], variables)))
        values = [row[1] for s in series for row in s["values"]]
        assert values, f"variable ${var['name']} returned nothing"
        variables[var["name"]] = LINK if var["name"] == "link" else "alice|bob"
    out: dict[str, list[dict]] = {}
    for title, target in _targets(dash["panels"]):
        assert target.get("rawQuery") and target["datasource"]["uid"] == "qnet-influxdb"
        series = _series(_query(server.url, _substitute(target["query"], variables)))
        values = [v for s in series for row in s["values"] for v in row[1:] if v is not None]
        assert values, f"panel {title!r} returned no data: {target['query']}"
        out.setdefault(title, []).append({"series": series, "values": values})
    return out


def test_every_link_panel_query_returns_data(loaded):
    got = _run_dashboard(loaded)
    for title in (
        "Sifted key rate",
        "QBER per basis (with 1-sigma interval)",
        "Classical channel traffic",
        "Clock lock",
        "Clock offset (with 1-sigma band)",
        "Clock frequency offset (with 1-sigma band)",
        "Secret key rate",
        "EC efficiency f",
        "Key store",
        "Keys delivered",
    ):
        assert title in got, f"no panel {title!r}: {sorted(got)}"


def test_link_panels_show_what_the_records_say(loaded):
    got = _run_dashboard(loaded)
    # QBER per basis: Z and X per site; the interval brackets the estimate
    z, z_lo, z_hi, x, x_lo, x_hi = got["QBER per basis (with 1-sigma interval)"]
    assert {s["tags"]["node"] for s in z["series"]} == {"alice", "bob"}
    assert max(z_lo["values"]) < min(z["values"]) and max(z["values"]) < min(z_hi["values"])
    assert max(x_lo["values"]) < min(x["values"]) and max(x["values"]) < min(x_hi["values"])
    # the clock band: offset - err < offset < offset + err, for both nodes
    off, minus, plus = (
        sorted(v for v in got["Clock offset (with 1-sigma band)"][i]["values"]) for i in range(3)
    )
    assert all(a < b < c for a, b, c in zip(minus, off, plus, strict=True))
    # lock state: acquiring, then locked
    assert set(got["Clock lock"][0]["values"]) == {"acquiring", "locked"}
    assert math.isclose(max(got["EC efficiency f"][0]["values"]), 1.06)
    assert sum(got["Keys delivered"][0]["values"]) >= 8  # 0..5 at each of two nodes


def test_the_link_fields_are_in_the_schema():
    """The dashboard reads only the ``link`` measurement, and only fields the schema defines."""
    dash = json.loads(DASHBOARD.read_text())
    fields = set(telemetry.MEASUREMENTS["link"].fields)
    for title, target in _targets(dash["panels"]):
        q = target["query"]
        assert 'FROM "link" ' in q, (title, q)
        used = set(re.findall(r"\(\"([a-z_]+)\"\)", q))
        assert used and used <= fields, (title, used - fields)
