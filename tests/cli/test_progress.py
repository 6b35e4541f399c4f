"""Progress of long file runs: plain lines when stderr is not a terminal."""

from __future__ import annotations

import pytest

import controller._cli_analyze as cli


def test_plain_lines_without_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "PLAIN_DELAY_S", 0.0)
    monkeypatch.setattr(cli, "PLAIN_EVERY_S", 0.0)
    with cli.DelayedProgress("reading big.ptu") as bar:
        assert not bar.enabled  # pytest's stderr is no terminal
        bar(25, 100)
        bar(100, 100)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("reading big.ptu: 25 of 100 records (25 %)")
    assert err[1].startswith("reading big.ptu: 100 of 100 records (100 %)")


def test_short_runs_stay_silent(capsys: pytest.CaptureFixture[str]) -> None:
    with cli.DelayedProgress("reading small.ptu") as bar:
        bar(100, 100)
    assert capsys.readouterr().err == ""
