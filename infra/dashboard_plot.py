"""Render the layout of template.yaml's CloudWatch dashboard to docs/dashboard.png.

``python -m infra.dashboard_plot``: each widget at its grid position (24 columns), with its
title and the metrics or SEARCH expressions it plots, read from the template itself, so the
picture in docs/observability.md is the dashboard that gets deployed.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "dashboard.png"


def dashboard_body(template_path: Path = ROOT / "template.yaml") -> dict[str, Any]:
    """The DashboardBody, its ${...} placeholders replaced by readable names."""
    text = template_path.read_text()
    block = re.search(r"DashboardBody: !Sub \|\n((?:        .*\n|\n)+)", text)
    if not block:
        raise SystemExit("template.yaml: no `DashboardBody: !Sub |` block found")
    body = block.group(1)
    for placeholder, value in {
        "${AWS::Region}": "REGION",
        "${AWS::StackName}": "<stack>",
        "${TaskQueue.QueueName}": "<task queue>",
        "${TaskDeadLetterQueue.QueueName}": "<dead-letter queue>",
    }.items():
        body = body.replace(placeholder, value)
    parsed: dict[str, Any] = json.loads(body)
    return parsed


def _lines(widget: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    namespace = ""
    for row in widget["properties"]["metrics"]:
        if isinstance(row[0], dict):
            expression = row[0]["expression"]
            stat = re.search(r"'(p\d+)'", expression)
            name = re.search(r'MetricName="(\w+)"', expression)
            lines.append(f"SEARCH {name.group(1) if name else '?'} {stat.group(1) if stat else ''} per task")
            continue
        namespace = namespace if row[0] == "." else row[0]
        options = row[-1] if isinstance(row[-1], dict) else {}
        label = f" ({options['label']})" if "label" in options else ""
        lines.append(f"{namespace}  {row[1]}{label}")
    return lines


def render(output: Path = OUTPUT) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    widgets = dashboard_body()["widgets"]
    rows = max(w["y"] + w["height"] for w in widgets)
    figure, axes = plt.subplots(figsize=(14, 14 * rows / 24 + 0.6))
    for widget in widgets:
        x, y, width, height = widget["x"], widget["y"], widget["width"], widget["height"]
        axes.add_patch(Rectangle((x + 0.15, y + 0.15), width - 0.3, height - 0.3, fill=True, color="#f3f6fa"))
        axes.add_patch(Rectangle((x + 0.15, y + 0.15), width - 0.3, height - 0.3, fill=False, color="#5b7fa6"))
        axes.text(x + 0.5, y + 0.7, widget["properties"]["title"], fontsize=10, weight="bold", va="top")
        lines = _lines(widget)
        per_column = max(1, int((height - 1.9) / 0.42))
        for index, line in enumerate(lines):
            column, row = divmod(index, per_column)
            left = x + 0.7 + column * (width - 1) / 2
            axes.text(left, y + 1.6 + row * 0.42, line, fontsize=7.2, va="top", family="monospace")
    axes.set_xlim(0, 24)
    axes.set_ylim(rows, 0)
    axes.axis("off")
    axes.set_title("CloudWatch dashboard <stack>-tasks (template.yaml TasksDashboard), 24-column grid", fontsize=11)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return output


if __name__ == "__main__":
    print(render(Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT))
