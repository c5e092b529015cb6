"""Turn the measurements into ``bench/results.md``, a PNG of the distributions and ``docs/benchmarks.md``'s table."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from bench.model import Section, Table, Target

# The results document's block that `make bench` rewrites (docs/benchmarks.md by default).
BENCH_START = "<!-- bench:start -->"
BENCH_END = "<!-- bench:end -->"


def targets_table(targets: Sequence[Target]) -> Table:
    table = Table("Targets", ["target", "goal", "measured", "verdict", "why"])
    for target in targets:
        table.rows.append([target.name, target.goal, target.measured, target.verdict, target.why or ""])
    return table


def render_markdown(sections: Sequence[Section], header: str, plot_name: str | None) -> str:
    targets = [target for section in sections for target in section.targets]
    parts = [
        "# Benchmark results",
        "",
        header,
        "",
        targets_table(targets).markdown(),
    ]
    for section in sections:
        parts += ["", section.markdown()]
    if plot_name:
        parts += ["", "## Distributions", "", f"![latency distributions]({plot_name})"]
    return "\n".join(parts) + "\n"


def results_block(sections: Sequence[Section], summary: str, results: Path, doc: Path) -> str:
    """The targets table for ``doc``, linking to ``results`` by a path relative to ``doc``."""
    targets = [target for section in sections for target in section.targets]
    table = Table("Latest `make bench`", ["target", "goal", "measured", "verdict"])
    table.rows = [[t.name, t.goal, t.measured, t.verdict] for t in targets]
    link = Path(os.path.relpath(results.resolve(), doc.resolve().parent)).as_posix()
    details = f"Every table, the reasons and the plot: [bench/results.md]({link})."
    return f"{summary}\n\n{table.markdown()}\n\n{details}"


def update_results_doc(doc: Path, block: str) -> str:
    """Rewrite what lies between the bench markers; returns what happened, for the progress log."""
    if not doc.exists():
        return f"{doc.name} not found: benchmark table not updated"
    text = doc.read_text()
    pattern = re.compile(re.escape(BENCH_START) + r".*?" + re.escape(BENCH_END), re.DOTALL)
    if not pattern.search(text):
        return f"no {BENCH_START} / {BENCH_END} markers in {doc.name}: benchmark table not updated"
    replacement = f"{BENCH_START}\n{block}\n{BENCH_END}"
    doc.write_text(pattern.sub(lambda _: replacement, text, count=1))
    return f"{doc.name}: benchmark table updated"


def plot(sections: Sequence[Section], path: Path) -> bool:
    """One horizontal box plot per section with samples (whiskers p5-p95); False if nothing to plot."""
    panels = [section for section in sections if any(d.samples for d in section.distributions)]
    if not panels:
        return False
    heights = [max(2.0, 0.38 * len(section.distributions) + 1.2) for section in panels]
    figure, axes = plt.subplots(len(panels), 1, figsize=(11, sum(heights)), height_ratios=heights, squeeze=False)
    for axis, section in zip(axes[:, 0], panels, strict=True):
        shown = [d for d in section.distributions if d.samples]
        axis.boxplot(
            [d.samples for d in shown],
            orientation="horizontal",
            whis=(5, 95),
            showfliers=False,
            tick_labels=[d.label for d in shown],
        )
        values = [value for d in shown for value in d.samples if value > 0]
        if values and max(values) / min(values) > 50:
            axis.set_xscale("log")
            axis.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            axis.xaxis.set_minor_formatter(NullFormatter())
        axis.invert_yaxis()
        axis.set_title(section.title, loc="left", fontsize=10)
        axis.set_xlabel(section.unit)
        axis.tick_params(axis="y", labelsize=7)
        axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
