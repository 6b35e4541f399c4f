"""Every Grafana panel's InfluxQL returns data from a real InfluxDB 1.x loaded with a testbed run.

The data is the telemetry the daemon itself produced while running (in-process, faster than real
time) on the emulated testbed: window records, polled instrument readings, device health and an
interlock trip and clear (see ``tests/telemetry/_testbed_run.py``).
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest
import yaml

from controller.testing.pipeline import REPO
from tests.telemetry._testbed_run import run_testbed

pytestmark = [pytest.mark.servers]

#: The QKD link dashboard shows records a single-node run does not make: its queries run
#: against a two-site link's records in test_tel_link_dashboard.py.
DASHBOARDS = sorted(
    p for p in (REPO / "configs/grafana/dashboards").glob("*.json") if p.stem != "qkd-link"
)

#: Panels no testbed run can fill, (dashboard, panel title) -> why. Each must stay empty here:
#: once something emits the data the test fails and the entry has to go.


def _query(url, q, db="qnet"):
    body = urllib.parse.urlencode({"db": db, "q": q, "epoch": "ns"}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{url}/query", data=body), timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Line protocol of a daemon run on the emulated testbed (~20 windows of 1 s, at 4x)."""
    return run_testbed(tmp_path_factory.mktemp("testbed-run"), windows=20, speed=4.0)


@pytest.fixture(scope="module")
def loaded(influxdb1, run):
    lines, first_ns, last_ns = run
    _query(influxdb1.url, "CREATE DATABASE qnet")
    req = urllib.request.Request(
        f"{influxdb1.url}/write?db=qnet&precision=ns",
        data="\n".join(lines).encode(),
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 204
    # whole seconds around the run, so the 10 s GROUP BY buckets hold every point
    t0 = (first_ns // 10**9 - 1) * 10**9
    t1 = (last_ns // 10**9 + 2) * 10**9
    return influxdb1, t0, t1, lines


def test_the_run_is_the_daemons_own_telemetry(run):
    lines, first_ns, last_ns = run
    kinds = {line.split(",", 1)[0] for line in lines}
    for m in (
        "singles",
        "coincidences",
        "qber",
        "key_rate",
        "laser",
        "detector",
        "health",
        "power_meter",
        "polarization",
        "interlock",
    ):
        assert m in kinds, f"the testbed run produced no {m} records: {sorted(kinds)}"
    assert sum(line.startswith("key_rate,") for line in lines) >= 20
    events = [line for line in lines if line.startswith("interlock,")]
    assert any('event="trip"' in e for e in events) and any('event="clear"' in e for e in events)
    # after calibration the emulated link makes key: some window has a positive secure rate
    secure = [
        float(line.split("secure_bps=", 1)[1].split(",", 1)[0])
        for line in lines
        if line.startswith("key_rate,")
    ]
    assert max(secure) > 0, secure
    assert 0 < last_ns - first_ns < 120 * 10**9


def _targets(dash):
    def walk(panels):
        for p in panels:
            yield from walk(p.get("panels", []))
            for t in p.get("targets", []):
                yield p["title"], t

    return list(walk(dash["panels"]))


def _substitute(q, t0, t1, variables):
    q = q.replace("$timeFilter", f"time >= {t0 // 10**6}ms and time <= {t1 // 10**6}ms")
    q = q.replace("$__interval", "10s").replace("$interval", "10s")
    for name, value in variables.items():
        q = q.replace(f"${name}", value)
    assert "$" not in q.replace("/^", "").replace("$/", ""), f"unsubstituted variable in {q}"
    return q


def _values(result):
    res = result["results"][0]
    assert "error" not in res, res["error"]
    return [
        v for s in res.get("series", []) for row in s["values"] for v in row[1:] if v is not None
    ]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_query_returns_data(loaded, path):
    server, t0, t1, _ = loaded
    dash = json.loads(path.read_text())
    variables = {}
    for var in dash["templating"]["list"]:
        q = _substitute(var["query"], t0, t1, variables)
        res = _query(server.url, q)["results"][0]
        values = [row[1] for s in res.get("series", []) for row in s["values"]]
        assert values, f"variable ${var['name']} query returned nothing: {q}"
        variables[var["name"]] = "alice" if "alice" in values else values[0]
    targets = _targets(dash)
    assert len(targets) >= 7
    for title, target in targets:
        assert target.get("rawQuery") and target["datasource"]["uid"] == "qnet-influxdb"
        q = _substitute(target["query"], t0, t1, variables)
        values = _values(_query(server.url, q))
        assert values, f"panel {title!r} returned no data: {q}"
    for ann in dash["annotations"]["list"]:
        q = _substitute(ann["query"], t0, t1, variables)
        assert len(_values(_query(server.url, q))) >= 2, f"annotation {ann['name']}: {q}"


def test_node_overview_covers_the_issue_list():
    dash = json.loads((REPO / "configs/grafana/dashboards/node-overview.json").read_text())
    text = json.dumps(dash)
    for m in (
        "singles",
        "coincidences",
        "accidentals",
        "car",
        "qber",
        "sifted_bps",
        "secure_bps",
        "laser",
        "output_on",
        "detector",
        "health",
        "interlock",
        "power_meter",
        "polarization",
    ):
        assert f'\\"{m}\\"' in text or f'"{m}"' in text, m


def test_provisioning_points_at_the_dashboards_datasource():
    ds = yaml.safe_load(
        (REPO / "configs/grafana/provisioning/datasources/influxdb.yaml").read_text()
    )
    (source,) = ds["datasources"]
    assert source["jsonData"]["version"] == "InfluxQL" and source["type"] == "influxdb"
    for path in DASHBOARDS:
        uids = {t["datasource"]["uid"] for _, t in _targets(json.loads(path.read_text()))}
        assert uids == {source["uid"]}
    prov = yaml.safe_load((REPO / "configs/grafana/provisioning/dashboards/qnet.yaml").read_text())
    assert prov["providers"][0]["type"] == "file"
