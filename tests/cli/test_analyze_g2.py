"""``qnet analyze FILE --g2 A,B [--herald H]``: g2(0) +- sigma and a g2(tau) PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_analyze import run

from coincidence import generate_poisson_light, generate_pulsed_source, write_npz
from controller._cli_analyze import g2_file, plot_g2

MS = 10**9


@pytest.fixture(scope="module")
def single_photons(tmp_path_factory: pytest.TempPathFactory) -> Path:
    batch = generate_pulsed_source(
        duration_ps=10 * MS, period_ps=12_500, mean_photons=0.5, statistics="single",
        efficiency=0.6, dark_rate_hz=500.0, seed=5,
    )  # fmt: skip
    p = tmp_path_factory.mktemp("g2") / "spe.npz"
    write_npz(p, batch)
    return p


def test_heralded_g2_of_a_single_photon_emitter_is_near_zero(single_photons: Path) -> None:
    r = run("analyze", single_photons, "--g2", "1,2", "--herald", 0, "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["heralded"] and d["g2_0"] < 0.02 and 0 < d["g2_0_sigma"] < 0.02
    assert Path(d["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(d["png"]).parent == single_photons.parent
    t = run("analyze", single_photons, "--g2", "1,2", "--herald", 0)
    assert t.exit_code == 0
    assert "g2(0) = " in t.stdout and " +- " in t.stdout and "heralded by channel 0" in t.stdout


def test_poisson_light_g2_is_one_and_the_plot_says_what_it_shows(tmp_path: Path) -> None:
    p = tmp_path / "laser.npz"
    write_npz(p, generate_poisson_light(duration_ps=100 * MS, rates_hz=[2e6, 2e6], seed=7))
    r = run("analyze", p, "--g2", "0,1", "--window-ps", 2000, "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert not d["heralded"] and abs(d["g2_0"] - 1) < 4 * d["g2_0_sigma"]
    zero, curve = g2_file(str(p), 0, 1, None, window_ps=2000, delays_ps=None, bin_ps=200,
                          range_ps=20_000)  # fmt: skip
    assert zero.g2 == pytest.approx(d["g2_0"])
    fig = plot_g2(curve, tmp_path / "g2.png", "g2(tau) of channels A = 0, B = 1")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "tau = t_B - t_A - delay (ns)"
    assert ax.get_ylabel() == "g2(tau), 200 ps bins"
    assert ax.get_title() == "g2(tau) of channels A = 0, B = 1"
    assert ax.get_yscale() == "linear"
    lo, hi = ax.get_xlim()
    assert lo <= -20.0 and hi >= 20.0  # the whole +-20 ns range
    ylo, yhi = ax.get_ylim()
    assert ylo <= curve.g2.min() and yhi >= curve.g2.max()
    assert (tmp_path / "g2.png").is_file()


def test_pulsed_plot_goes_log_when_values_span_decades(single_photons: Path, tmp_path) -> None:
    _, curve = g2_file(str(single_photons), 1, 2, None, window_ps=1000, delays_ps=None,
                       bin_ps=100, range_ps=30_000)  # fmt: skip
    fig = plot_g2(curve, tmp_path / "p.png", "t")
    assert fig.axes[0].get_yscale() == "log"
    assert np.max(curve.g2) > 10  # the side peaks of a pulsed source


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["--g2", "1"], "--g2 needs two channel numbers"),
        (["--g2", "1,1"], "two different channels"),
        (["--g2", "1,2", "--herald", 1], "--herald 1 must differ"),
        (["--herald", 0], "--herald needs --g2"),
        (["--g2", "1,2", "--g2-range-ps", 150], "multiple of --g2-bin-ps"),
    ],
)
def test_bad_g2_options_are_named(single_photons: Path, args: list, msg: str) -> None:
    r = run("analyze", single_photons, *args)
    assert r.exit_code == 2 and msg in r.stderr and "Traceback" not in r.stderr
