"""``python -m bench``: run every measurement in one go and write the report.

Writes ``bench/results.md`` (tables, targets and why), ``bench/results.png`` (the
distributions), ``bench/raw/results.json`` (every sample) and the table between the
bench markers of ``docs/benchmarks.md``. ``--quick`` runs each measurement with tiny counts (a smoke run
of the harness: its numbers mean nothing), into ``bench/quick/``, and leaves the document alone.
Exits 1 if a measurement could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import (
    artifacts,
    cold_start,
    container,
    handoff,
    lambda_runtime,
    metrics_cost,
    task_overhead,
    task_status,
    worker,
)
from bench.env import ROOT, progress
from bench.model import Section, Target
from bench.report import plot, render_markdown, results_block, update_results_doc

# The document whose table between the bench markers `make bench` rewrites.
RESULTS_DOC = ROOT / "docs" / "benchmarks.md"
MEASUREMENTS = (
    "lambda",
    "container",
    "cold_start",
    "task_overhead",
    "artifacts",
    "metrics",
    "handoff",
    "worker",
    "task_status",
)


@dataclass(frozen=True)
class Counts:
    lambda_invocations: int
    lambda_warmup: int
    container_rounds: int
    container_duration: float
    container_warmup: float
    container_connections: tuple[int, ...]
    cold_start_repetitions: int
    cold_start_warmup: bool
    cold_start_functions: list[str] | None
    task_requests: int
    task_rounds: int
    durable_requests: int
    durable_warmup: int
    metrics_requests: int
    metrics_rounds: int
    metrics_imports: int
    handoff_invocations: int
    handoff_rounds: int
    worker_rounds: int
    status_requests: int
    status_rounds: int
    handler_cpu_calls: int
    """Section 1's in-process handler CPU: calls per round (5 rounds per fresh interpreter)."""
    handler_cpu_repetitions: int
    """Section 1's in-process handler CPU: fresh interpreters per handler."""


FULL = Counts(40, 2, 5, 2.0, 0.5, (8, 1), 12, True, None, 1000, 5, 100, 10, 500, 7, 15, 10, 3, 7, 30, 4, 400, 3)
QUICK = Counts(
    1, 1, 1, 0.3, 0.1, (2,), 1, False, ["functions.notifications.app"], 50, 2, 5, 1, 20, 2, 2, 1, 1, 1, 3, 1, 20, 1
)


def _runners(counts: Counts, workdir: Path, build: bool) -> dict[str, Callable[[], Section]]:
    measured: dict[str, float] = {}

    def run_container() -> Section:
        section, scenarios = container.measure(
            workdir,
            counts.container_rounds,
            counts.container_duration,
            counts.container_warmup,
            counts.container_connections,
        )
        measured["server_cpu_us"] = container.template_cpu_us(scenarios, counts.container_connections[0])
        return section

    return {
        "lambda": lambda: lambda_runtime.measure(
            workdir,
            counts.lambda_invocations,
            counts.lambda_warmup,
            handler_cpu_calls=counts.handler_cpu_calls,
            handler_cpu_repetitions=counts.handler_cpu_repetitions,
        ),
        "container": run_container,
        "cold_start": lambda: cold_start.measure(
            workdir,
            counts.cold_start_repetitions,
            counts.cold_start_warmup,
            profile_imports=counts.cold_start_warmup,
            functions=counts.cold_start_functions,
            build=build,
        ),
        "task_overhead": lambda: task_overhead.measure(workdir, counts.task_requests, counts.task_rounds),
        "artifacts": lambda: artifacts.measure(workdir, build, counts.durable_requests, counts.durable_warmup),
        "metrics": lambda: metrics_cost.measure(
            workdir,
            counts.metrics_requests,
            counts.metrics_rounds,
            counts.metrics_imports,
            server_cpu_us=measured.get("server_cpu_us"),
        ),
        "handoff": lambda: handoff.measure(workdir, counts.handoff_invocations, counts.handoff_rounds),
        "worker": lambda: worker.measure(workdir, counts.worker_rounds),
        "task_status": lambda: task_status.measure(workdir, counts.status_requests, counts.status_rounds),
    }


def _failed(key: str, error: str) -> Section:
    return Section(
        key=key,
        title=f"{key}: could not run",
        intro=f"```\n{error.strip()}\n```",
        targets=[Target(f"{key}", "", "measurement failed", None, error.strip().splitlines()[-1][:200])],
    )


def _load_average() -> str:
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def destinations(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """Where the results go, and the document whose bench block is rewritten (None: none).

    A quick run's numbers mean nothing: by default it overwrites neither the results nor the document.
    """
    output: Path = args.output or (ROOT / "bench" / "quick" if args.quick else ROOT / "bench")
    results_doc: Path | None = args.results_doc or (None if args.quick else RESULTS_DOC)
    return output, None if args.no_results_doc else results_doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks the harness, not the numbers")
    parser.add_argument("--only", default=",".join(MEASUREMENTS), help=f"comma-separated subset of {MEASUREMENTS}")
    parser.add_argument(
        "--no-sam",
        action="store_true",
        help="skip `sam build`: no artifact sizes; cold start imports this checkout in the dev venv (not judged)",
    )
    parser.add_argument(
        "--output", type=Path, help="where results.md and results.png go (bench/; bench/quick/ with --quick)"
    )
    parser.add_argument(
        "--results-doc",
        type=Path,
        help=f"document whose bench block (between the bench markers) is rewritten ({RESULTS_DOC.relative_to(ROOT)}; "
        "none with --quick, whose numbers mean nothing)",
    )
    parser.add_argument("--no-results-doc", action="store_true", help="leave the results document alone")
    args = parser.parse_args(argv)

    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(selected) - set(MEASUREMENTS))
    if unknown:
        parser.error(f"unknown measurements {unknown}; choose from {MEASUREMENTS}")
    counts = QUICK if args.quick else FULL
    output, results_doc = destinations(args)
    started = time.monotonic()
    load_before = _load_average()
    sections: list[Section] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        runners = _runners(counts, Path(scratch), build=not args.no_sam)
        for name in MEASUREMENTS:
            if name not in selected:
                continue
            progress(f"== {name} ({time.monotonic() - started:.0f} s elapsed)")
            try:
                sections.append(runners[name]())
            except Exception:
                failed = True
                error = traceback.format_exc()
                print(error, file=sys.stderr, flush=True)
                sections.append(_failed(name, error))
    elapsed = time.monotonic() - started

    output.mkdir(parents=True, exist_ok=True)
    plot_path = output / "results.png"
    plotted = plot(sections, plot_path)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    header = (
        f"`make bench`{' --quick (tiny counts: these numbers mean nothing)' if args.quick else ''} on {when}, "
        f"{machine}; load average (1/5/15 min) {load_before} before, {_load_average()} after; "
        f"took {elapsed:.0f} s. Variants ran side by side and took turns in one run, so read the ratios: "
        "absolute numbers depend on the machine and on whatever else it was running."
    )
    results = output / "results.md"
    results.write_text(render_markdown(sections, header, plot_path.name if plotted else None))
    raw = output / "raw"
    raw.mkdir(exist_ok=True)
    (raw / "results.json").write_text(json.dumps([asdict(section) for section in sections], indent=1))
    progress(f"wrote {results}" + (f" and {plot_path}" if plotted else ""))
    if results_doc is not None:
        summary = f"Measured on {when} ({machine}, load average {load_before}); `make bench` reproduces it."
        progress(update_results_doc(results_doc, results_block(sections, summary, results, results_doc)))
    for section in sections:
        for target in section.targets:
            progress(f"{target.verdict.strip('*'):>12}  {target.name}: {target.measured}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
