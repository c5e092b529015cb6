"""Measurement 2: throughput and latency of one uvicorn worker, template against bare FastAPI.

Every server listens on 127.0.0.1 and runs for the whole measurement; the load generator
(``bench.loadgen``) is a separate process using keep-alive connections. Variants take
turns within each round (order reversed every other round), so a noisy neighbour
slows both sides alike; the throughput ratio is the median of the per-round ratios.

What each server prints (counted, per request, in the tables):
- template (``python -m shared.serve``): JSON lines ``task.queued``, ``task.succeeded``
  (``task.started`` is DEBUG) and ``request.completed``; uvicorn's access log off (its default).
- bare FastAPI (``python -m uvicorn``, default settings): uvicorn's plain-text access line.

Context switches are counted over every thread of the server (``/proc``): a ``def`` task's
hand-over to the thread pool is where most come from.

A round ends when every request's task has run, not at its last response: a server can answer
faster than its thread pool runs the tasks, and the tasks left queued would be work done after
the clock stopped. After the load, the round waits until the notification log (one line per
task, both servers) holds a line per request; req/s counts that wait in the round's time, and
the server CPU per request includes the tasks'.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.env import PYTHON, ROOT, child_env, progress
from bench.model import Distribution, Section, Table, Target, fmt, fmt_ratio, median, percentile, ratio
from infra.servers import ServerProcess, free_port, parse_json_lines, wait_until_healthy

PATH = "/send-notification/jane.doe@example.com"
GRACE = "30"


@dataclass
class Run:
    rps: float
    latencies_ms: list[float]
    errors: int
    cpu_us_per_request: float
    switches_per_request: float
    lines_per_request: float
    bytes_per_request: float
    access_lines_per_request: float
    drain_ms: float
    """After the last response, until every task of the round had run."""


@dataclass
class Variant:
    label: str
    role: str  # "template", "baseline" or "diagnostic"
    command: list[str]
    env: dict[str, str]
    runs: dict[int, list[Run]] = field(default_factory=dict)
    server: ServerProcess | None = None

    def start(self) -> None:
        port = free_port()
        self.server = ServerProcess([*self.command, "--port", str(port)], self.env, port)

    def wait_healthy(self) -> None:
        assert self.server is not None
        try:
            wait_until_healthy(f"{self.server.base_url}/health", self.server.process, timeout=60)
        except Exception:
            print(self.server.output())
            raise

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def latencies(self, connections: int) -> list[float]:
        return [value for run in self.runs.get(connections, []) for value in run.latencies_ms]

    def median_of(self, connections: int, attribute: str) -> float:
        return median([getattr(run, attribute) for run in self.runs.get(connections, [])])


@dataclass
class Scenario:
    title: str
    task_ms: int
    variants: list[Variant]
    first_load_only: bool = False
    """Run at the run's first connection count only (a diagnostic)."""

    def loads(self, connections: tuple[int, ...]) -> tuple[int, ...]:
        return connections[:1] if self.first_load_only else connections


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (Linux ``/proc``); NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _context_switches(pid: int) -> float:
    """Voluntary and involuntary context switches of every thread of ``pid`` so far (Linux ``/proc``); NaN elsewhere."""
    threads = Path(f"/proc/{pid}/task")
    if not threads.is_dir():
        return math.nan
    total = 0
    for status in threads.glob("*/status"):
        with contextlib.suppress(OSError):  # a thread that just ended
            total += sum(int(line.split()[1]) for line in status.read_text().splitlines() if "ctxt_switches:" in line)
    return total


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _lines_in(path: Path, since: int = 0) -> int:
    """Lines written to ``path`` past its first ``since`` bytes (the log grows through the whole bench)."""
    try:
        with path.open("rb") as written:
            written.seek(since)
            return sum(chunk.count(b"\n") for chunk in iter(lambda: written.read(1 << 16), b""))
    except FileNotFoundError:
        return 0


def _wait_for_tasks(log: Path, since: int, expected: int, timeout_s: float = 30.0) -> float:
    """Seconds until ``log`` holds ``expected`` lines past byte ``since``: every task of the round has run."""
    started = time.perf_counter()
    deadline = started + timeout_s
    while (written := _lines_in(log, since)) < expected:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{log}: {written} task lines after {timeout_s:g} s, expected {expected}")
        time.sleep(0.002)
    return time.perf_counter() - started


def _load(variant: Variant, connections: int, warmup: float, duration: float) -> Run:
    server = variant.server
    assert server is not None
    tasks_log = Path(variant.env["NOTIFICATION_LOG_PATH"])
    tasks_since = _size(tasks_log)
    cpu_before = _cpu_seconds(server.process.pid)
    switches_before = _context_switches(server.process.pid)
    output_before = server.output()
    completed = subprocess.run(  # noqa: S603 - our own interpreter and tools, fixed arguments
        [
            PYTHON,
            "-m",
            "bench.loadgen",
            "--port",
            str(server.port),
            "--path",
            PATH,
            "--connections",
            str(connections),
            "--warmup",
            str(warmup),
            "--duration",
            str(duration),
        ],
        cwd=ROOT,
        env=variant.env,
        capture_output=True,
        text=True,
        timeout=warmup + duration + 60,
        check=True,
    )
    result = json.loads(completed.stdout)
    total = max(int(result["total"]), 1)
    drain_s = _wait_for_tasks(tasks_log, tasks_since, int(result["total"]) - int(result["errors"]))
    cpu = _cpu_seconds(server.process.pid) - cpu_before
    switches = _context_switches(server.process.pid) - switches_before
    printed = server.output()[len(output_before) :]
    return Run(
        rps=result["count"] / (result["elapsed"] + drain_s),
        latencies_ms=result["latencies_ms"],
        errors=int(result["errors"]),
        cpu_us_per_request=cpu / total * 1e6,
        switches_per_request=switches / total,
        lines_per_request=printed.count("\n") / total,
        bytes_per_request=len(printed.encode()) / total,
        access_lines_per_request=sum(e.get("logger") == "uvicorn.access" for e in parse_json_lines(printed)) / total,
        drain_ms=drain_s * 1000,
    )


def _scenarios(workdir: Path) -> list[Scenario]:
    serve = [PYTHON, "-m", "shared.serve"]
    bare = [PYTHON, "-m", "uvicorn", "bench.baselines.bare_app:app", "--host", "127.0.0.1"]
    bare += ["--timeout-graceful-shutdown", GRACE]
    slow = {"BENCH_TASK_MS": "50"}
    cheap = Variant(
        "template: python -m shared.serve notifications", "template", [*serve, "notifications"], child_env(workdir)
    )
    cheap_async = Variant(
        "template: shared.serve --app bench.template_app:app",
        "template",
        [*serve, "--app", "bench.template_app:app"],
        child_env(workdir, BENCH_TASK_KIND="async"),
    )
    return [
        Scenario(
            "cheap task (the tutorial's write_notification, a `def` run in the thread pool)",
            0,
            [cheap, Variant("bare FastAPI + uvicorn", "baseline", bare, child_env(workdir)), _without_lines(cheap)],
        ),
        Scenario(
            "cheap `async def` task (diagnostic: the same write, no thread pool hand-over)",
            0,
            [
                cheap_async,
                Variant("bare FastAPI + uvicorn", "baseline", bare, child_env(workdir, BENCH_TASK_KIND="async")),
                _without_lines(cheap_async),
            ],
            first_load_only=True,
        ),
        Scenario(
            "50 ms task (`async def`: asyncio.sleep(0.05), then the same write)",
            50,
            [
                Variant(
                    "template: shared.serve --app bench.template_app:app",
                    "template",
                    [*serve, "--app", "bench.template_app:app"],
                    child_env(workdir, **slow),
                ),
                Variant("bare FastAPI + uvicorn", "baseline", bare, child_env(workdir, **slow)),
            ],
        ),
    ]


def _without_lines(template: Variant) -> Variant:
    """The same server with LOG_LEVEL=WARNING: no line per request, what the lines cost."""
    return Variant(
        "template, LOG_LEVEL=WARNING (diagnostic)",
        "diagnostic",
        template.command,
        {**template.env, "LOG_LEVEL": "WARNING"},
    )


def measure(
    workdir: Path, rounds: int = 3, duration: float = 2.5, warmup: float = 0.5, connections: tuple[int, ...] = (8, 1)
) -> tuple[Section, list[Scenario]]:
    scenarios = _scenarios(workdir)
    variants = [variant for scenario in scenarios for variant in scenario.variants]
    progress(f"container: starting {len(variants)} servers")
    try:
        for variant in variants:
            variant.start()
        for variant in variants:
            variant.wait_healthy()
        for scenario in scenarios:
            for conns in scenario.loads(connections):
                for round_index in range(rounds):
                    ordered = scenario.variants if round_index % 2 == 0 else scenario.variants[::-1]
                    for variant in ordered:
                        run = _load(variant, conns, warmup, duration)
                        variant.runs.setdefault(conns, []).append(run)
                        progress(
                            f"container: {scenario.task_ms} ms task, {conns} conn, round {round_index + 1}/{rounds}, "
                            f"{variant.label.split(':')[0]}: {run.rps:,.0f} req/s"
                        )
    finally:
        for variant in variants:
            variant.stop()
    return _section(scenarios, connections, rounds, duration), scenarios


def template_cpu_us(scenarios: list[Scenario], connections: int) -> float:
    """Server CPU per request of the template with the cheap task (the first scenario)."""
    template = next(v for v in scenarios[0].variants if v.role == "template")
    return template.median_of(connections, "cpu_us_per_request")


def round_ratios(template: Variant, baseline: Variant, connections: int) -> list[float]:
    pairs = zip(template.runs.get(connections, []), baseline.runs.get(connections, []), strict=False)
    return [ratio(ours.rps, theirs.rps) for ours, theirs in pairs]


def _section(scenarios: list[Scenario], connections: tuple[int, ...], rounds: int, duration: float) -> Section:
    section = Section(
        key="container",
        title="2. Container: one uvicorn worker under load",
        intro=(
            f"`POST {PATH}` on 127.0.0.1, {rounds} rounds of {duration:g} s per variant and load, variants "
            "interleaved; closed-loop keep-alive connections from a separate load-generator process. "
            "Latencies pooled over the rounds; req/s is the median round, each round timed until the last of its "
            "tasks ran ('tasks done after the load': how long that took past the last response); the ratio is the "
            "median of the per-round ratios to bare FastAPI. Server CPU is user+system time of the server process "
            "per request, its task included."
        ),
    )
    headers = [
        "variant",
        "connections",
        "req/s",
        "ratio",
        "p50 ms",
        "p99 ms",
        "tasks done after the load, ms",
        "server CPU us/req",
        "context switches/req",
        "log lines/req",
        "log bytes/req",
        "errors",
    ]
    for scenario in scenarios:
        table = Table(scenario.title, headers)
        baseline = next(v for v in scenario.variants if v.role == "baseline")
        for conns in scenario.loads(connections):
            for variant in scenario.variants:
                runs = variant.runs.get(conns, [])
                latencies = variant.latencies(conns)
                ratio_cell = (
                    "baseline" if variant is baseline else fmt_ratio(median(round_ratios(variant, baseline, conns)))
                )
                table.rows.append(
                    [
                        variant.label,
                        str(conns),
                        fmt(variant.median_of(conns, "rps"), 0),
                        ratio_cell,
                        fmt(percentile(latencies, 50)),
                        fmt(percentile(latencies, 99)),
                        fmt(variant.median_of(conns, "drain_ms")),
                        fmt(variant.median_of(conns, "cpu_us_per_request"), 0),
                        fmt(variant.median_of(conns, "switches_per_request"), 1),
                        fmt(variant.median_of(conns, "lines_per_request"), 1),
                        fmt(variant.median_of(conns, "bytes_per_request"), 0),
                        str(sum(run.errors for run in runs)),
                    ]
                )
                section.distributions.append(
                    Distribution(
                        f"{variant.label.split(':')[0]} | {scenario.task_ms} ms task | {conns} conn", latencies
                    )
                )
        section.tables.append(table)
    section.notes += _notes(scenarios, connections)
    section.targets.append(_target(scenarios[0], connections[0], scenarios[1]))
    return section


def _roles(scenario: Scenario) -> tuple[Variant, Variant, Variant | None]:
    """The scenario's template, baseline and (if any) diagnostic variants."""
    template = next(v for v in scenario.variants if v.role == "template")
    baseline = next(v for v in scenario.variants if v.role == "baseline")
    return template, baseline, next((v for v in scenario.variants if v.role == "diagnostic"), None)


def _thread_hand_over(template: Variant, baseline: Variant, connections: int, cheap_async: Scenario) -> str:
    """The `def` task's hand-over to the thread pool, in context switches, and the `async def` run beside it."""
    text = (
        "; the `def` task's hand-over to the thread pool costs context switches "
        f"({fmt(template.median_of(connections, 'switches_per_request'), 1)} per request for the template, "
        f"{fmt(baseline.median_of(connections, 'switches_per_request'), 1)} for bare)"
    )
    ours, theirs, quiet = _roles(cheap_async)
    if connections not in ours.runs:
        return text
    extra = ours.median_of(connections, "cpu_us_per_request") - theirs.median_of(connections, "cpu_us_per_request")
    text += (
        f"; with the same write as an `async def` task (no hand-over, "
        f"{fmt(ours.median_of(connections, 'switches_per_request'), 1)} switches) the template spends "
        f"{fmt(extra, 0)} us more than bare"
    )
    if quiet is not None:
        without = quiet.median_of(connections, "cpu_us_per_request") - theirs.median_of(
            connections, "cpu_us_per_request"
        )
        text += f", {fmt(without, 0)} us without its lines"
    return text


def _notes(scenarios: list[Scenario], connections: tuple[int, ...]) -> list[str]:
    notes = []
    cheap, slow = scenarios[0], scenarios[-1]
    single = min(connections)
    for role in ("template", "baseline"):
        fast_variant = next(v for v in cheap.variants if v.role == role)
        slow_variant = next(v for v in slow.variants if v.role == role)
        fast_p50 = percentile(fast_variant.latencies(single), 50)
        slow_p50 = percentile(slow_variant.latencies(single), 50)
        if math.isnan(slow_p50):
            continue
        verdict = "does not wait for" if slow_p50 < slow.task_ms else "waits for"
        notes.append(
            f"{role}: on one connection, a request sent right after one with a {slow.task_ms} ms task takes "
            f"p50 {fmt(slow_p50)} ms (cheap task: {fmt(fast_p50)} ms): the next request {verdict} the previous "
            "request's background work (uvicorn starts the next request as soon as a response is complete)."
        )
    return notes


THROUGHPUT_TARGET = 0.95


def _target(cheap: Scenario, connections: int, cheap_async: Scenario) -> Target:
    template, baseline, quiet = _roles(cheap)
    rounds = round_ratios(template, baseline, connections)
    measured = median(rounds)
    met = None if math.isnan(measured) else measured >= THROUGHPUT_TARGET
    spread = f"; rounds {fmt_ratio(min(rounds))} to {fmt_ratio(max(rounds))}" if len(rounds) > 1 else ""
    cpu_ours = template.median_of(connections, "cpu_us_per_request")
    cpu_theirs = baseline.median_of(connections, "cpu_us_per_request")
    why = (
        f"server CPU per request {fmt(cpu_ours, 0)} us against {fmt(cpu_theirs, 0)} us; the server is "
        f"CPU-bound, so {THROUGHPUT_TARGET:g}x leaves the template about "
        f"{fmt(cpu_theirs * (1 / THROUGHPUT_TARGET - 1), 0)} us per request more than bare, and it spends "
        f"{fmt(cpu_ours - cpu_theirs, 0)} us. It prints {fmt(template.median_of(connections, 'lines_per_request'), 1)} "
        "JSON lines per request (the task log schema at INFO: task.queued and task.succeeded, then "
        f"request.completed), bare uvicorn {fmt(baseline.median_of(connections, 'lines_per_request'), 1)} access line"
    )
    access = template.median_of(connections, "access_lines_per_request")
    if access >= 0.5:
        why += (
            f" ({fmt(access, 1)} of the template's lines are uvicorn access lines although `shared.serve` runs "
            "uvicorn with access_log off: the logging setup re-enables them)"
        )
    quiet_ratio = math.nan
    if quiet is not None:
        cpu_quiet = quiet.median_of(connections, "cpu_us_per_request")
        quiet_ratio = median(round_ratios(quiet, baseline, connections))
        why += (
            f"; without any line (LOG_LEVEL=WARNING) it reaches {fmt_ratio(quiet_ratio)}: the lines cost "
            f"{fmt(cpu_ours - cpu_quiet, 0)} us, the rest {fmt(cpu_quiet - cpu_theirs, 0)} us"
        )
    why += _thread_hand_over(template, baseline, connections, cheap_async)
    if not met:
        why += (
            ". What would close it: fewer lines per request, the task schema's three lines per task as fewer "
            "(a schema change this issue rules out)"
        )
        if quiet_ratio < THROUGHPUT_TARGET:
            why += ", and more: even without any line the template misses"
    return Target(
        name="(2) container throughput, cheap task",
        goal=f">= {THROUGHPUT_TARGET:g}x bare FastAPI (req/s, same worker settings)",
        measured=f"{fmt_ratio(measured)} ({fmt(template.median_of(connections, 'rps'), 0)} vs "
        f"{fmt(baseline.median_of(connections, 'rps'), 0)} req/s, {connections} connections{spread})",
        met=met,
        why=why + ".",
    )
