"""``make bench``'s harness still runs end to end: a quick run with tiny counts (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import README_END, README_START, update_readme
from infra.servers import ROOT

README = f"# Project\n\n## Benchmarks\n\n{README_START}\nstale table\n{README_END}\n\n## After\n"


@pytest.mark.timeout(400)
def test_quick_bench_writes_every_table_the_plot_and_the_readme_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    output = tmp_path / "out"

    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-sam", "--output", str(output), "--readme", str(readme)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=380,
    )

    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "[bench] == container" in completed.stdout  # progress is printed while it runs
    report = (output / "results.md").read_text()
    for heading in (
        "**Targets**",
        "## 1. Lambda",
        "**Lambda time to response (ms)**",
        "**Lambda time until the environment is free (ms)**",
        "## 2. Container",
        "**cheap task",
        "**cheap `async def` task",
        "**50 ms task",
        "## 3. Cold start",
        "`functions.notifications.app`",
        "## 4. Per-task overhead",
        "**Whole request, in-process ASGI call",
        "## 5. Deployable artifacts",
        "**Durable (SQS) against in-process tasks",
        "## 6. Metrics and trace ids",
        "## 7. Zero silent loss",
        "**Fault injection",
        "**Handoff latency",
        "![latency distributions](results.png)",
    ):
        assert heading in report, heading
    for target in (
        "(1a)",
        "(1b)",
        "(2)",
        "(3) cold start, `functions.notifications.app`",
        "(5)",
        "(6a)",
        "(6b)",
        "(7)",
    ):
        assert f"| {target}" in report, target
    assert "could not run" not in report
    assert "not built: skipped (--no-sam)" in report
    assert (output / "results.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    raw = json.loads((output / "raw" / "results.json").read_text())
    keys = ["lambda", "container", "cold_start", "task_overhead", "artifacts", "metrics", "handoff"]
    assert [section["key"] for section in raw] == keys

    updated = readme.read_text()
    assert "stale table" not in updated
    block = updated.split(README_START)[1].split(README_END)[0]
    assert "**Latest `make bench`**" in block and "| (2) container throughput" in block
    assert updated.startswith("# Project\n\n## Benchmarks\n\n") and updated.endswith(f"{README_END}\n\n## After\n")


def test_readme_without_markers_is_left_alone(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Project\n")

    message = update_readme(readme, "table")

    assert "markers" in message
    assert readme.read_text() == "# Project\n"
