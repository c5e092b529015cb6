"""``make bench``'s harness still runs end to end: a quick run with tiny counts (no timing asserted)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import RESULTS_DOC, destinations
from bench.model import Section, Target
from bench.report import BENCH_END, BENCH_START, results_block, update_results_doc
from infra.servers import ROOT

pytestmark = pytest.mark.slow  # `make test-fast` leaves it out

DOC = f"# Benchmarks\n\n## Latest\n\n{BENCH_START}\nstale table\n{BENCH_END}\n\n## After\n"


@pytest.mark.timeout(1000)  # minutes when the suite's other workers share the cores
def test_quick_bench_writes_every_table_the_plot_and_the_results_doc_block(tmp_path: Path) -> None:
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.parent.mkdir()
    doc.write_text(DOC)
    output = tmp_path / "out"

    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-sam", "--output", str(output), "--results-doc", str(doc)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
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
        "**One log line, rendered and written to os.devnull",
        "## 5. Deployable artifacts",
        "**Durable (SQS) against in-process tasks",
        "## 6. Metrics and trace ids",
        "## 7. Zero silent loss",
        "**Fault injection",
        "**Handoff latency",
        "## 8. Worker",
        "**A batch of 10 tasks in `Worker.handle`",
        "## 9. Task status",
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
        "(8) worker",
        "(9a)",
        "(9b)",
    ):
        assert f"| {target}" in report, target
    assert "could not run" not in report
    assert "not built: skipped (--no-sam)" in report
    assert (output / "results.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    raw = json.loads((output / "raw" / "results.json").read_text())
    keys = [
        "lambda",
        "container",
        "cold_start",
        "task_overhead",
        "artifacts",
        "metrics",
        "handoff",
        "worker",
        "task_status",
    ]
    assert [section["key"] for section in raw] == keys

    updated = doc.read_text()
    assert "stale table" not in updated
    block = updated.split(BENCH_START)[1].split(BENCH_END)[0]
    assert "**Latest `make bench`**" in block and "| (2) container throughput" in block
    assert "[bench/results.md](../out/results.md)" in block  # relative to the document, never absolute
    assert updated.startswith("# Benchmarks\n\n## Latest\n\n") and updated.endswith(f"{BENCH_END}\n\n## After\n")


def test_a_document_without_markers_is_left_alone(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n")

    message = update_results_doc(doc, "table")

    assert "markers" in message
    assert doc.read_text() == "# Benchmarks\n"


def test_make_bench_writes_its_table_into_docs_benchmarks_not_the_readme() -> None:
    """The default results document holds the one marked block, linking to the report; the README has none."""
    text = RESULTS_DOC.read_text()
    assert RESULTS_DOC == ROOT / "docs" / "benchmarks.md"
    assert text.count(BENCH_START) == 1 and text.count(BENCH_END) == 1
    assert BENCH_START not in (ROOT / "README.md").read_text()
    section = Section("lambda", "1. Lambda", "", targets=[Target("(1a) x", "goal", "1.0x", True, "")])
    block = results_block([section], "Measured.", ROOT / "bench" / "results.md", RESULTS_DOC)
    assert "[bench/results.md](../bench/results.md)" in block and "| (1a) x | goal | 1.0x | met |" in block


def test_a_quick_run_overwrites_neither_the_results_nor_the_document_unless_told() -> None:
    """``python -m bench --quick`` (numbers that mean nothing) writes into bench/quick/ and leaves docs alone."""

    def parsed(quick: bool, output: Path | None = None, doc: Path | None = None, no_doc: bool = False) -> Any:
        return argparse.Namespace(quick=quick, output=output, results_doc=doc, no_results_doc=no_doc)

    assert destinations(parsed(quick=False)) == (ROOT / "bench", RESULTS_DOC)
    assert destinations(parsed(quick=True)) == (ROOT / "bench" / "quick", None)
    assert destinations(parsed(quick=True, output=Path("out"), doc=Path("d.md"))) == (Path("out"), Path("d.md"))
    assert destinations(parsed(quick=False, no_doc=True)) == (ROOT / "bench", None)
