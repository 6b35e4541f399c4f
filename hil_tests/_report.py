"""The human report of a HIL run: Markdown with the plots an operator wants (matplotlib Agg).

Checks put their numbers in :class:`HilReport` (``report.data[...]``) while they
run, pass or fail; the plugin adds every test's outcome and writes
``report.md`` plus PNGs at the end of the session. A plot is drawn from whatever
data a check recorded, so a failing sweep still shows what it measured.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Outcome:
    """One test's result as the report shows it."""

    nodeid: str
    outcome: str
    message: str = ""
    duration_s: float = 0.0


@dataclass
class HilReport:
    """Everything the report needs: config, outcomes, measured data, notes."""

    config_path: str
    bench: str
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    deselected: list[str] = field(default_factory=list)
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def record(self, nodeid: str, when: str, outcome: str, message: str, duration: float) -> None:
        """Fold one phase (setup/call/teardown) into the test's outcome."""
        cur = self.outcomes.get(nodeid)
        if cur is None:
            cur = self.outcomes[nodeid] = Outcome(nodeid, "passed")
        cur.duration_s += duration
        if outcome == "failed":
            cur.outcome = "failed" if when == "call" else "error"
            cur.message = cur.message or message
        elif outcome == "skipped" and cur.outcome == "passed":
            cur.outcome = "skipped"
            cur.message = message

    # -- writing --------------------------------------------------------------------------
    def write(self, directory: Path) -> Path:
        """Write ``report.md`` and its PNGs into ``directory``; returns the Markdown path."""
        directory.mkdir(parents=True, exist_ok=True)
        figures = self._plots(directory)
        counts: dict[str, int] = {}
        for o in self.outcomes.values():
            counts[o.outcome] = counts.get(o.outcome, 0) + 1
        lines = [
            "# Hardware-in-the-loop report",
            "",
            f"- config: `{self.config_path}`",
            f"- bench: {self.bench}",
            f"- started: {self.started:%Y-%m-%d %H:%M:%S} UTC",
            "- result: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())),
        ]
        if self.deselected:
            lines.append(f"- not run (deselected, see README): {len(self.deselected)}")
        lines += [
            "",
            "## Checks",
            "",
            "| check | result | time (s) | detail |",
            "|---|---|---|---|",
        ]
        for o in self.outcomes.values():
            detail = o.message.replace("|", "\\|").replace("\n", " ")[:300]
            name = o.nodeid.split("::", 1)[-1]
            lines.append(f"| `{name}` | **{o.outcome}** | {o.duration_s:.2f} | {detail} |")
        for nodeid in self.deselected:
            lines.append(f"| `{nodeid.split('::', 1)[-1]}` | not run | | deselected |")
        for title, fname, caption in figures:
            lines += ["", f"## {title}", "", f"![{title}]({fname})", "", caption]
        tables = self._tables()
        if tables:
            lines += ["", "## Measurements", "", *tables]
        if self.notes:
            lines += ["", "## Notes", "", *[f"- {n}" for n in self.notes]]
        path = directory / "report.md"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def _tables(self) -> list[str]:
        out: list[str] = []
        sweep = self.data.get("sweep")
        if sweep and sweep.get("x"):
            out += [
                f"Pump sweep ({sweep['x_label']}):",
                "",
                "| x | singles Alice (1/s) | singles Bob (1/s) | coincidences (1/s) | CAR |",
                "|---|---|---|---|---|",
            ]
            for row in zip(
                sweep["x"],
                sweep["singles_a"],
                sweep["singles_b"],
                sweep["coinc"],
                sweep["car"],
                strict=False,
            ):
                out.append("| {:.4g} | {:.4g} | {:.4g} | {:.4g} | {:.4g} |".format(*row))
            out.append("")
        dark = self.data.get("dark_counts")
        if dark:
            out += ["Dark counts, pump off:", "", "| detector | rate (1/s) |", "|---|---|"]
            out += [f"| {k} | {v:.1f} |" for k, v in dark.items()]
            out.append("")
        delay = self.data.get("delay")
        if delay:
            out.append(
                f"Delay: found {delay['found_ps']} ps, configured {delay['expected_ps']} ps, "
                f"bin {delay['bin_ps']} ps."
            )
            out.append("")
        comp = self.data.get("compensation")
        if comp and comp.get("final"):
            out.append(
                "QBER after compensation: Z {z:.4f}, X {x:.4f} ({n} evaluations, {why}).".format(
                    **comp["final"]
                )
            )
        return out

    def _plots(self, directory: Path) -> list[tuple[str, str, str]]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        made: list[tuple[str, str, str]] = []
        sweep = self.data.get("sweep")
        if sweep and len(sweep.get("x", [])) >= 2:
            fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
            ax1.plot(sweep["x"], sweep["car"], "o-")
            ax1.set_xlabel(sweep["x_label"])
            ax1.set_ylabel("CAR")
            ax1.set_yscale("log")
            ax1.set_title("CAR versus pump power")
            ax2.plot(sweep["x"], sweep["singles_a"], "o-", label="singles Alice")
            ax2.plot(sweep["x"], sweep["singles_b"], "s-", label="singles Bob")
            ax2.plot(sweep["x"], sweep["coinc"], "^-", label="coincidences")
            ax2.set_xlabel(sweep["x_label"])
            ax2.set_ylabel("rate (1/s)")
            ax2.legend()
            ax2.set_title("Rates versus pump power")
            fig.tight_layout()
            fig.savefig(directory / "car_vs_pump.png", dpi=100)
            plt.close(fig)
            made.append(
                (
                    "CAR versus pump power",
                    "car_vs_pump.png",
                    "CAR should fall as the pump power rises (multi-pair accidentals grow as "
                    "power squared); singles and coincidences should rise linearly.",
                )
            )
        hist = self.data.get("histogram")
        if hist and len(hist.get("counts", [])):
            fig, ax = plt.subplots(figsize=(7, 4))
            ax.step(
                [(e - hist["found_ps"]) * 1e-3 for e in hist["edges"]],
                hist["counts"],
                where="post",
            )
            ax.axvline((hist["expected_ps"] - hist["found_ps"]) * 1e-3, ls="--", color="k")
            ax.set_xlabel(f"t_Bob - t_Alice - {hist['found_ps'] * 1e-6:.4f} us (ns)")
            ax.set_ylabel(f"counts per {hist['bin_ps']} ps")
            ax.set_title(f"Coincidence histogram {hist['pair']} at the found delay")
            fig.tight_layout()
            fig.savefig(directory / "histogram_at_delay.png", dpi=100)
            plt.close(fig)
            made.append(
                (
                    "Coincidence histogram at the found delay",
                    "histogram_at_delay.png",
                    "The peak should sit at 0; the dashed line is the configured fiber delay.",
                )
            )
        comp = self.data.get("compensation")
        if comp and comp.get("qber"):
            fig, ax = plt.subplots(figsize=(7, 4))
            ax.plot(range(1, len(comp["qber"]) + 1), comp["qber"], ".-", label="measured")
            ax.axhline(comp["max"], ls="--", color="r", label="pass threshold")
            ax.set_xlabel("evaluation")
            ax.set_ylabel("QBER (mean of Z and X)")
            ax.set_yscale("log")
            ax.set_title("QBER over the compensation run")
            ax.legend()
            fig.tight_layout()
            fig.savefig(directory / "qber_compensation.png", dpi=100)
            plt.close(fig)
            made.append(
                (
                    "QBER over the compensation run",
                    "qber_compensation.png",
                    "Each point is one setpoint the optimizer tried (kept or not).",
                )
            )
        return made
