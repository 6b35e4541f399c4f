"""The reliability report's fault table: figures a person reads in seconds."""

from __future__ import annotations

from benchmarks.reliability import _faults_markdown


def test_fault_table_rounds_floats_and_keeps_the_rest() -> None:
    table = _faults_markdown(
        {"link": {"secret_rate_bps": 2192.308724832215, "epochs_lost": 0, "ok": True}}
    )
    assert "| link | secret_rate_bps | 2192 |" in table
    assert "| link | epochs_lost | 0 |" in table
    assert "| link | ok | True |" in table
    assert "2192.3087" not in table
