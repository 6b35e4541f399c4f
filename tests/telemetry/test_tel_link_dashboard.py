"""The QKD link dashboard's InfluxQL, run against a real InfluxDB 1.x loaded with link records.

The records are those of a two-site link (both nodes, a minute of one-second windows, the
clock acquiring then locked, key delivered), built with the telemetry schema's own
constructors and codec, so a renamed measurement or field fails here.
"""

from __future__ import annotations

import json
import math
import urllib.parse
import urllib.request

import pytest

import telemetry
from tests.telemetry._pipeline import REPO

pytestmark = [pytest.mark.servers]

DASHBOARD = REPO / "configs/grafana/dashboards/qkd-link.json"
LINK = "alice-bob"
T0 = 1_780_000_000 * 10**9  # whole seconds


def _query(url: str, q: str) -> dict:
    body = urllib.parse.urlencode({"db": "qnet", "q": q, "epoch": "ns"}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{url}/query", data=body), timeout=10) as r:
        return json.loads(r.read())


def link_records(seconds: int = 60) -> list[telemetry.Record]:
    """What both nodes of a link report, one record set per second."""
    out = []
    for k in range(seconds):
        t = T0 + k * 10**9
        locked = k >= 8
        for node, sign in (("alice", 1), ("bob", -1)):
            out.append(
                telemetry.link(
                    node=node,
                    link=LINK,
                    time_ns=t,
                    sifted_bps=2_500.0 if locked else 0.0,
                    sifted_bits=2_500 * max(0, k - 8),
                    channel_tx_bytes_per_s=3.1e4 if node == "alice" else 2.2e3,
                    channel_rx_bytes_per_s=2.2e3 if node == "alice" else 3.1e4,
                    channel_refused=0,
                    clock_locked=locked,
                    clock_offset_ps=sign * (-7.3e11 + 4.1e-5 * k * 1e12),
                    clock_offset_err_ps=120.0 if locked else 5e6,
                    clock_ppm=sign * -41.0,
                    clock_ppm_err=0.02 if locked else 5.0,
                )
            )
            if locked:
                for basis, q in (("z", 0.011), ("x", 0.013)):
                    out.append(
                        telemetry.link_qber(
                            node=node,
                            link=LINK,
                            basis=basis,
                            qber=q,
                            qber_low=q - 0.004,
                            qber_high=q + 0.005,
                            sample_bits=1_000,
                            time_ns=t,
                        )
                    )
                out.append(
                    telemetry.link_key(
                        node=node,
                        link=LINK,
                        time_ns=t,
                        secret_bps=900.0,
                        ec_efficiency=1.06,
                        store_keys=4 * (k - 8),
                        store_bits=1024 * (k - 8),
                        delivered_keys=k // 10,
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
        "QBER per basis (with confidence interval)",
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
    # QBER per basis: one series per (node, basis); the interval brackets the estimate
    mid, lo, hi = (got["QBER per basis (with confidence interval)"][i] for i in range(3))
    tags = {(s["tags"]["node"], s["tags"]["basis"]) for s in mid["series"]}
    assert tags == {("alice", "z"), ("alice", "x"), ("bob", "z"), ("bob", "x")}
    assert max(lo["values"]) < min(mid["values"]) and max(mid["values"]) < min(hi["values"])
    # the clock band: offset - err < offset < offset + err, for both nodes
    off, minus, plus = (
        sorted(v for v in got["Clock offset (with 1-sigma band)"][i]["values"]) for i in range(3)
    )
    assert all(a < b < c for a, b, c in zip(minus, off, plus, strict=True))
    # lock state: acquiring (0) then locked (1)
    lock = got["Clock lock"][0]["values"]
    assert set(lock) == {0, 1}
    assert math.isclose(max(got["EC efficiency f"][0]["values"]), 1.06)
    assert sum(got["Keys delivered"][0]["values"]) >= 8  # 0..5 at each of two nodes


def test_the_link_measurements_are_in_the_schema():
    """The dashboard names only measurements and fields the schema defines."""
    text = DASHBOARD.read_text()
    for name in ("link", "link_qber", "link_key"):
        meas = telemetry.MEASUREMENTS[name]
        assert f'FROM \\"{name}\\"' in text
        for field in meas.fields:
            if field != "seq" and field not in (
                "sifted_bits",
                "channel_refused",
                "store_bits",
                "sample_bits",
            ):
                assert f'\\"{field}\\"' in text, f"{name}.{field} is on no panel"
