"""What a measurement hands to the report: tables, targets and raw samples for the plot."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linearly interpolated; NaN when there is no sample."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else math.nan


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline and not math.isnan(baseline) else math.nan


def fmt(value: float, digits: int = 2) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def fmt_ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [
            f"**{self.title}**",
            "",
            "| " + " | ".join(self.headers) + " |",
            "|" + "|".join("---" for _ in self.headers) + "|",
        ]
        lines += ["| " + " | ".join(cells) + " |" for cells in self.rows]
        return "\n".join(lines)


@dataclass
class Target:
    """One of the issue's targets; ``met`` is None when it could not be measured."""

    name: str
    goal: str
    measured: str
    met: bool | None
    why: str

    @property
    def verdict(self) -> str:
        return {True: "met", False: "**missed**", None: "not measured"}[self.met]


@dataclass
class Distribution:
    """Raw samples of one variant, plotted side by side with the others of its panel."""

    label: str
    samples: list[float]


@dataclass
class Section:
    key: str
    title: str
    intro: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    distributions: list[Distribution] = field(default_factory=list)
    unit: str = "ms"

    def markdown(self) -> str:
        parts = [f"## {self.title}", "", self.intro]
        for table in self.tables:
            parts += ["", table.markdown()]
        if self.notes:
            parts += ["", *(f"- {note}" for note in self.notes)]
        return "\n".join(parts)


def summary_row(label: str, samples: Sequence[float], baseline: Sequence[float] | None) -> list[str]:
    """``label | n | median | p95 | ratio of medians to the baseline``."""
    ratio_cell = "baseline" if baseline is None else fmt_ratio(ratio(median(samples), median(baseline)))
    return [label, str(len(samples)), fmt(median(samples)), fmt(percentile(samples, 95)), ratio_cell]
