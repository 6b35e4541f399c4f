"""The durable outbox and spool (SQLite WAL) and the settings that hold secrets."""

from __future__ import annotations

import logging

import pytest

from telemetry import (
    BridgeSettings,
    Outbox,
    OutboxFull,
    Secret,
    SettingsError,
    Spool,
    load_bridge_settings,
    singles,
)

T = 1_700_000_000_000_000_000


def recs(n, start=0):
    return [
        ("t", singles(node="a", channel=1, counts=i, time_ns=T + i))
        for i in range(start, start + n)
    ]


def test_outbox_order_seq_and_persistence(tmp_path):
    ob = Outbox(tmp_path / "o.db", max_records=100)
    assert ob.append(recs(5)) == [1, 2, 3, 4, 5]
    rows = ob.peek(10)
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0][2].startswith("singles,channel=1,node=a counts=0i,seq=1i ")
    ob.remove([1, 2])
    assert len(ob) == 3
    ob.close()
    ob = Outbox(tmp_path / "o.db", max_records=100)  # a publisher restart
    assert len(ob) == 3 and [r[0] for r in ob.peek(10)] == [3, 4, 5]
    assert ob.append(recs(1)) == [6]  # numbering continues, never reused
    ob.close()


def test_outbox_drop_oldest_counts_and_warns(tmp_path, caplog):
    ob = Outbox(tmp_path / "o.db", max_records=10, policy="drop_oldest")
    ob.append(recs(8))
    with caplog.at_level(logging.WARNING):
        ob.append(recs(5, start=8))
    assert len(ob) == 10
    assert [r[0] for r in ob.peek(100)] == list(range(4, 14))
    assert ob.dropped == 3
    assert "dropped the 3 oldest" in caplog.text


def test_outbox_refuse_newest_keeps_what_is_stored(tmp_path):
    ob = Outbox(tmp_path / "o.db", max_records=10, policy="refuse_newest")
    ob.append(recs(8))
    with pytest.raises(OutboxFull, match="refusing 3 new"):
        ob.append(recs(3))
    assert [r[0] for r in ob.peek(100)] == list(range(1, 9))
    assert ob.append(recs(2)) == [9, 10]


def test_outbox_bad_policy():
    with pytest.raises(ValueError, match="policy"):
        Outbox("/nonexistent/x.db", policy="keep_all")


def test_spool_fifo_bound_and_persistence(tmp_path):
    sp = Spool(tmp_path / "s.db", max_messages=10)
    sp.append([(2, "a\nb"), (1, "c"), (3, "d\ne\nf")])
    assert sp.free() == 7
    last, n, chunks = sp.peek(3)
    assert (n, chunks) == (3, ["a\nb", "c"])
    sp.remove_through(last)
    sp.close()
    sp = Spool(tmp_path / "s.db", max_messages=10)
    assert len(sp) == 1
    last, n, chunks = sp.peek(1)  # one row even if larger than the limit
    assert (n, chunks) == (3, ["d\ne\nf"])


def test_secrets_from_env_and_file_never_in_repr(tmp_path, monkeypatch):
    monkeypatch.setenv("QNET_TEST_PW", "s3cr3t-env")
    (tmp_path / "tok").write_text("s3cr3t-file\n")
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(
        f"""
bridge:
  broker: {{host: 127.0.0.1, port: 1883, client_id: b, username: bridge,
           password: {{env: QNET_TEST_PW}}}}
  influx: {{url: "http://127.0.0.1:8086", token: {{file: {tmp_path / "tok"}}}}}
  spool: {{path: {tmp_path / "spool.db"}}}
"""
    )
    s = load_bridge_settings(cfg)
    assert isinstance(s, BridgeSettings)
    assert s.broker.password_value() == "s3cr3t-env"
    assert s.influx.token_value() == "s3cr3t-file"
    text = repr(s) + str(s) + s.model_dump_json()
    assert "s3cr3t" not in text
    monkeypatch.delenv("QNET_TEST_PW")
    with pytest.raises(SettingsError, match="QNET_TEST_PW is not set"):
        s.broker.password_value()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("broker: [1, 2", "not valid YAML"),
        ("- 1", "mapping"),
        ("broker: {client_id: x}\ninflux: {url: u}\nspool: {path: p}\nbogus: 1", "bogus"),
        ("broker: {client_id: x, port: 0}\ninflux: {url: u}\nspool: {path: p}", "port"),
    ],
)
def test_bad_config_is_named(tmp_path, body, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(body)
    with pytest.raises(SettingsError, match=message) as info:
        load_bridge_settings(cfg)
    assert str(cfg) in str(info.value)


def test_secret_needs_a_source():
    with pytest.raises(ValueError, match="env"):
        Secret()


def test_shipped_bridge_example_config_loads():
    from controller.testing.pipeline import REPO

    s = load_bridge_settings(REPO / "configs/bridge.yaml")
    assert s.broker.client_id and s.broker.password.env == "QNET_BRIDGE_MQTT_PASSWORD"
    assert s.topics == ("qnet/v1/+/telemetry/#",)


def test_require_skips_locally_and_fails_under_ci(monkeypatch):
    from controller.testing import servers

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        servers.require("no-such-server-binary")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        servers.require("no-such-server-binary")


def test_cli_bridge_bad_config_exits_2(tmp_path):
    from typer.testing import CliRunner

    from controller.cli import app

    result = CliRunner().invoke(app, ["bridge", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2
    assert "missing.yaml" in result.output
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "broker: {client_id: b, password: {env: QNET_NOT_SET_ANYWHERE}}\n"
        "influx: {url: 'http://127.0.0.1:1'}\nspool: {path: " + str(tmp_path / "s.db") + "}\n"
    )
    result = CliRunner().invoke(app, ["bridge", str(cfg)])
    assert result.exit_code == 2
    assert "QNET_NOT_SET_ANYWHERE is not set" in result.output


async def _counters(tmp_path):
    from telemetry import Publisher, PublisherSettings

    pub = Publisher(
        PublisherSettings.model_validate(
            {"node": "a", "broker": {"client_id": "x"}, "outbox": {"path": str(tmp_path / "o.db")}}
        )
    )
    pub.submit([singles(node="a", channel=1, counts=1, time_ns=T)])
    with pytest.raises(ValueError, match="node 'b'"):
        pub.submit([singles(node="b", channel=1, counts=1, time_ns=T)])
    rec = pub.counters_record(T)
    await pub.close()
    return rec


def test_publisher_refuses_other_nodes_and_reports_counters(tmp_path):
    import asyncio

    rec = asyncio.run(_counters(tmp_path))
    assert rec.measurement == "telemetry" and rec.fields["outbox_records"] == 1


def test_publisher_with_unusable_tls_file_says_which_and_keeps_trying(tmp_path, caplog):
    """A missing CA file must not end the sender task silently: logged by name, retried."""
    import asyncio

    from telemetry import Publisher, PublisherSettings

    missing = tmp_path / "no-such-ca.pem"

    async def main():
        pub = Publisher(
            PublisherSettings.model_validate(
                {
                    "node": "a",
                    "broker": {
                        "client_id": "x",
                        "port": 1,
                        "tls": {"ca_file": str(missing)},
                        "reconnect_min_s": 0.05,
                        "reconnect_max_s": 0.1,
                    },
                    "outbox": {"path": str(tmp_path / "o.db")},
                }
            )
        )
        task = pub.start()
        pub.submit([singles(node="a", channel=1, counts=1, time_ns=T)])
        await asyncio.sleep(0.5)
        alive = not task.done()
        await pub.close(drain_s=0)
        return alive, len(Outbox(tmp_path / "o.db"))

    with caplog.at_level(logging.ERROR, logger="qnet.telemetry.publisher"):
        alive, kept = asyncio.run(main())
    assert alive
    assert kept == 1  # the record waits on disk
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and all(f"tls.ca_file {missing}" in m for m in errors), errors
    assert len(errors) >= 2  # retried, not given up


def test_tls_settings_name_the_file_they_cannot_use(tmp_path):
    from telemetry import TlsSettings

    with pytest.raises(SettingsError, match=r"tls\.ca_file .*nope\.pem"):
        TlsSettings(ca_file=tmp_path / "nope.pem").context()
    bad = tmp_path / "cert.pem"
    bad.write_text("not a certificate")
    with pytest.raises(SettingsError, match=r"tls\.cert_file .*cert\.pem"):
        TlsSettings(cert_file=bad).context()


def test_bridge_config_errors_never_print_a_secret(tmp_path):
    """A password or token written literally (instead of env/file) is refused, not echoed."""
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(
        "bridge:\n"
        "  broker: {client_id: b, password: hunter2-literal}\n"
        "  influx: {url: 'http://127.0.0.1:1', token: my-influx-token-literal}\n"
        f"  spool: {{path: {tmp_path / 's.db'}}}\n"
    )
    with pytest.raises(SettingsError) as err:
        load_bridge_settings(cfg)
    text = str(err.value)
    assert "bridge.broker.password" in text and "bridge.influx.token" in text, text
    assert "hunter2" not in text and "my-influx-token" not in text, text
