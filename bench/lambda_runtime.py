"""Measurement 1: Lambda time-to-response and time-until-environment-free.

The real runtime client (``awslambdaric``) serves each handler in its own process against
the Runtime + Extensions API emulator of the tests (``infra.runtime_api``), which
records when the response arrived and when the environment became free (the runtime and
every extension asked for their next event: the moment Lambda could freeze it or hand out
the next invocation, and until which it bills). All seven environments run at once and take
turns, one invocation at a time: the template's ``make_handler`` over ``bench.template_app``
and plain ``Mangum`` over ``bench.baselines.bare_app``, each with no task (``GET /health``),
a task of 0 ms (the tutorial's write) and 500 ms, and a diagnostic: the template with no task and
``TASK_BACKEND=inline`` (no post-response extension), which says what the extension's release costs.
The event is the HTTP API (v2) one from ``infra/events`` (path and method changed for ``/health``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.env import ROOT, progress
from bench.model import Distribution, Section, Table, Target, fmt, fmt_ratio, median, ratio, summary_row
from infra.runtime_api import LambdaEnvironment, RuntimeApiEmulator, RuntimeClientProcess, load_event

EVENT = "notifications-send-notification-http-api.json"
NO_TASK = -1
"""``task_ms`` of the environments invoked with ``GET /health``: no task queued."""
TASK_MS = (NO_TASK, 0, 500)
FREE_TARGETS = {NO_TASK: 1.1, 0: 1.3}
"""Environment free, template over plain Mangum: Lambda bills until then."""
NOT_DELAYED_MS = 0.5
"""(1a) is met within 1.1x or within this many ms: a 500 ms task cannot hide in less."""
TEMPLATE = "template (make_handler)"
WITHOUT_EXTENSION = "template, TASK_BACKEND=inline (diagnostic)"
"""No post-response extension: tasks would run before the response. Only with no task, to price the release."""
PLAIN = "plain Mangum"
HANDLERS = {TEMPLATE: "bench.template_app.handler", PLAIN: "bench.baselines.bare_app.handler"}


@dataclass
class Variant:
    label: str
    handler: str
    task_ms: int
    response_ms: list[float] = field(default_factory=list)
    free_ms: list[float] = field(default_factory=list)
    received_ms: list[float] = field(default_factory=list)
    """From hand-out to the runtime client receiving the invocation (the Runtime API's part before the function)."""
    posted_ms: list[float] = field(default_factory=list)
    """From hand-out to the runtime client starting to post the response (received_ms, then the function's part)."""
    api_ms: list[float] = field(default_factory=list)
    """From that post to the emulator recording the response (transport and the emulator's part)."""
    failures: list[str] = field(default_factory=list)
    environment: LambdaEnvironment | None = None
    clock: Path | None = None
    """``bench.post_clock``'s file: when the runtime client posted each response."""
    invocations: list[Any] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    """Set for this environment only, over the bench's own."""


def _variants() -> list[Variant]:
    variants = [Variant(label, handler, task_ms) for task_ms in TASK_MS for label, handler in HANDLERS.items()]
    variants.append(Variant(WITHOUT_EXTENSION, HANDLERS[TEMPLATE], NO_TASK, env={"TASK_BACKEND": "inline"}))
    return variants


def _rows(variants: list[Variant], task_ms: int) -> list[Variant]:
    """The environments with ``task_ms``, in table order: the template, its diagnostic if any, plain Mangum."""
    order = (TEMPLATE, WITHOUT_EXTENSION, PLAIN)
    return sorted((v for v in variants if v.task_ms == task_ms), key=lambda v: order.index(v.label))


def task_label(task_ms: int) -> str:
    return "no task" if task_ms == NO_TASK else f"{task_ms} ms task"


def health_event(event: dict[str, Any], path: str = "/health") -> dict[str, Any]:
    """The same HTTP API event as ``GET path`` (``/health``: an endpoint that queues no task)."""
    health = copy.deepcopy(event)
    health.update(rawPath=path, rawQueryString="", body="")
    health.pop("pathParameters", None)
    health["requestContext"]["http"].update(method="GET", path=path)
    return health


def _invoke(variant: Variant, event: dict[str, Any], record: bool) -> None:
    assert variant.environment is not None
    if variant.task_ms == NO_TASK:
        event = health_event(event)
    invocation = variant.environment.invoke(event, timeout=60).wait_free(60)
    status = invocation.result.get("statusCode") if invocation.status == "success" else invocation.status
    if status != 200:
        variant.failures.append(f"{status}: {invocation.body!r}"[:200])
    elif record:
        variant.response_ms.append(invocation.time_to_response * 1000)
        variant.free_ms.append(invocation.time_to_free * 1000)
        variant.invocations.append(invocation)


def _wait_for_clocks(variants: list[Variant], posts: int, timeout_s: float = 5.0) -> None:
    """Until each process noted its last post: it does so after the post returns, when the emulator has the response."""
    deadline = time.monotonic() + timeout_s
    for variant in variants:
        assert variant.clock is not None
        while len(variant.clock.read_text().split()) < posts and time.monotonic() < deadline:
            time.sleep(0.01)


def _split_responses(variant: Variant, invocations: int, warmup: int) -> None:
    """Pair each recorded invocation with the moments it was received and its response posted (``bench.post_clock``)."""
    assert variant.clock is not None
    posted = [float(line) for line in variant.clock.read_text().split()]
    received = [float(line) for line in Path(f"{variant.clock}.received").read_text().split()]
    if len(posted) != invocations + warmup or len(received) < len(posted) or variant.failures:
        return
    for invocation, receiving, posting in zip(variant.invocations, received[warmup:], posted[warmup:], strict=False):
        variant.received_ms.append((receiving - invocation.handed_out_at) * 1000)
        variant.posted_ms.append((posting - invocation.handed_out_at) * 1000)
        variant.api_ms.append((invocation.responded_at - posting) * 1000)


def _start(variants: list[Variant], workdir: Path) -> None:
    """Start every environment first, then wait for their inits, which overlap."""
    for index, variant in enumerate(variants):
        variant.clock = workdir / f"lambda-posts-{index}.txt"
        env = {
            "BENCH_TASK_MS": str(max(variant.task_ms, 0)),
            "NOTIFICATION_LOG_PATH": str(workdir / "lambda-notifications.log"),
            "LOG_LEVEL": "INFO",
            "BENCH_HANDLER": variant.handler,
            "BENCH_POST_CLOCK": str(variant.clock),
            **variant.env,
        }
        api = RuntimeApiEmulator(function_name="bench", timeout_s=30).start()
        process = RuntimeClientProcess(api, "bench.post_clock.handler", env=env)
        variant.environment = LambdaEnvironment(api, process)
    for variant in variants:
        assert variant.environment is not None
        try:
            variant.environment.api.wait_ready(60, alive=variant.environment.process.alive)
        except Exception:
            print(variant.environment.process.output())
            raise


def _stop(variants: list[Variant]) -> None:
    for variant in variants:
        if variant.environment is not None:
            variant.environment.process.close()
            variant.environment.api.stop()
            variant.environment = None


def measure(
    workdir: Path,
    invocations: int = 20,
    warmup: int = 2,
    *,
    handler_cpu_calls: int,
    handler_cpu_repetitions: int,
) -> Section:
    variants = _variants()
    event = load_event(EVENT)
    progress(f"lambda: starting {len(variants)} runtime-client environments (awslambdaric + emulator)")
    try:
        _start(variants, workdir)
        for index in range(warmup + invocations):
            for variant in variants if index % 2 == 0 else variants[::-1]:
                _invoke(variant, event, record=index >= warmup)
            done = index - warmup + 1
            if done > 0 and (done % 5 == 0 or done == invocations):
                progress(f"lambda: {done}/{invocations} invocations per environment")
        _wait_for_clocks(variants, warmup + invocations)
    finally:
        _stop(variants)
    for variant in variants:
        _split_responses(variant, invocations, warmup)
    progress("lambda: handler CPU per call, in-process")
    return _section(variants, invocations, warmup, _handlers_cpu_us(handler_cpu_repetitions, handler_cpu_calls))


QUIET = "template, LOG_LEVEL=WARNING"
"""The template's handler without its request.completed line (in-process CPU only)."""


def _handlers_cpu_us(repetitions: int, calls: int) -> dict[str, float]:
    """In-process CPU per warm call of each handler: the median of fresh interpreters, taking turns."""
    runs: dict[str, tuple[str, str]] = {TEMPLATE: (HANDLERS[TEMPLATE], "INFO"), PLAIN: (HANDLERS[PLAIN], "INFO")}
    runs[QUIET] = (HANDLERS[TEMPLATE], "WARNING")
    samples: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(repetitions):
        for label, (handler, log_level) in runs.items():
            samples[label].append(_handler_cpu_us(handler, calls, log_level))
    return {label: median(values) for label, values in samples.items()}


def _handler_cpu_us(handler: str, calls: int, log_level: str = "INFO") -> float:
    """``bench.handler_cpu`` in a fresh interpreter: CPU microseconds per warm ``GET /health`` call."""
    completed = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-m", "bench.handler_cpu", handler, str(calls)],
        cwd=ROOT,
        env={**os.environ, "LOG_LEVEL": log_level, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return float(json.loads(completed.stdout.strip().splitlines()[-1])["us"])


def _find(variants: list[Variant], label: str, task_ms: int) -> Variant:
    return next(v for v in variants if v.label == label and v.task_ms == task_ms)


def _section(variants: list[Variant], invocations: int, warmup: int, cpu_us: dict[str, float]) -> Section:
    section = Section(
        key="lambda",
        title="1. Lambda: time to response and until the environment is free",
        intro=(
            f"{invocations} warm invocations per environment (after {warmup} discarded), environments taking turns; "
            "`awslambdaric` against the Runtime/Extensions API emulator on 127.0.0.1, event "
            f"`infra/events/{EVENT}`. The 500 ms task is `asyncio.sleep(0.5)` then the write; the 0 ms one the "
            "tutorial's write alone; 'no task' is `GET /health`. Ratio: to plain Mangum with the same task."
        ),
    )
    headers = ["handler", "n", "median ms", "p95 ms", "ratio to plain Mangum"]
    for metric, attribute in (("time to response", "response_ms"), ("time until the environment is free", "free_ms")):
        table = Table(f"Lambda {metric} (ms)", headers)
        for task_ms in TASK_MS:
            plain = _find(variants, PLAIN, task_ms)
            for variant in _rows(variants, task_ms):
                samples = getattr(variant, attribute)
                row = summary_row(
                    f"{variant.label}, {task_label(task_ms)}",
                    samples,
                    None if variant is plain else getattr(plain, attribute),
                )
                table.rows.append(row)
                short = "response" if attribute == "response_ms" else "free"
                section.distributions.append(
                    Distribution(f"{variant.label.split(' (')[0]}, {task_label(task_ms)}: {short}", samples)
                )
        section.tables.append(table)
    section.tables.append(_breakdown(variants))
    section.notes += _breakdown_notes()
    failures = [f"{v.label}, {v.task_ms} ms: {failure}" for v in variants for failure in v.failures]
    if failures:
        section.notes.append(f"{len(failures)} failed invocations, e.g. {failures[0]}")
    section.targets += _targets(variants, cpu_us)
    return section


def _breakdown(variants: list[Variant]) -> Table:
    table = Table(
        "Where the time until the environment is free goes (medians, ms)",
        [
            "handler",
            "hand-out to invocation received (Runtime API)",
            "received to response posted (function)",
            "post to response recorded (Runtime API)",
            "response to environment free",
            "free",
        ],
    )
    for task_ms in TASK_MS:
        for variant in _rows(variants, task_ms):
            after = [free - response for free, response in zip(variant.free_ms, variant.response_ms, strict=True)]
            table.rows.append(
                [
                    f"{variant.label}, {task_label(task_ms)}",
                    fmt(median(variant.received_ms)),
                    fmt(median(_function_ms(variant))),
                    fmt(median(variant.api_ms)),
                    fmt(median(after)),
                    fmt(median(variant.free_ms)),
                ]
            )
    return table


def _function_ms(variant: Variant) -> list[float]:
    """From receiving each invocation to starting to post its response: the function's own part."""
    return [posted - received for posted, received in zip(variant.posted_ms, variant.received_ms, strict=True)]


def _breakdown_notes() -> list[str]:
    return [
        "'hand-out to invocation received': from the emulator handing the invocation out until `awslambdaric`'s "
        "wait for it returns; 'received to response posted': from there until `awslambdaric` starts posting the "
        "response (`bench.post_clock` notes both moments; one monotonic clock for every process); 'post to "
        "response recorded': the request to the emulator (a Python server in the bench process, beside the other "
        "environments' emulators, whose threads share one GIL: where an extension is registered, the emulator "
        "answers its `event/next` with the INVOKE at the same hand-out); 'response to environment free': until "
        "every extension asked for its next event.",
        "The extension costs the template no hand-over: the handler's own thread sends `event/next` before it "
        "returns when no task is queued (the runner thread after the last task otherwise), and reads the INVOKE "
        "it ends only then; the extension thread sleeps through the invocation (a thread woken by the INVOKE "
        "would take the GIL from the handler). A last `def` task runs on the runner thread, not in the thread "
        "pool (two hand-overs fewer); the extension thread ends the process if it still runs at the deadline.",
    ]


def _targets(variants: list[Variant], cpu_us: dict[str, float]) -> list[Target]:
    ours_0 = median(_find(variants, TEMPLATE, 0).response_ms)
    ours_500 = median(_find(variants, TEMPLATE, 500).response_ms)
    free_500 = median(_find(variants, TEMPLATE, 500).free_ms)
    plain_500 = median(_find(variants, PLAIN, 500).response_ms)
    against_no_task = ratio(ours_500, ours_0)
    speedup = ratio(plain_500, ours_500)
    apart_ms = ours_500 - ours_0
    targets = [
        Target(
            name="(1a) Lambda response with a 500 ms task",
            goal=f"<= 1.1x the response with a 0 ms task, or <= {NOT_DELAYED_MS:g} ms apart",
            measured=f"{fmt_ratio(against_no_task)} ({fmt(ours_500)} vs {fmt(ours_0)} ms, {fmt(apart_ms)} ms apart)",
            met=None if math.isnan(against_no_task) else against_no_task <= 1.1 or apart_ms <= NOT_DELAYED_MS,
            why=(
                "the handler returns before the task runs; the lambda-extension backend runs it afterwards and "
                f"holds the environment until it is done (free after {fmt(free_500)} ms)"
            ),
        ),
        Target(
            name="(1b) Lambda response with a 500 ms task, against plain Mangum",
            goal=">= 10x faster than plain Mangum",
            measured=f"{fmt(speedup, 1)}x faster ({fmt(ours_500)} vs {fmt(plain_500)} ms)",
            met=None if math.isnan(speedup) else speedup >= 10,
            why="plain Mangum runs the whole ASGI cycle, background task included, before it returns the response",
        ),
    ]
    for task_ms, goal in FREE_TARGETS.items():
        ours, plain = _find(variants, TEMPLATE, task_ms).free_ms, _find(variants, PLAIN, task_ms).free_ms
        measured = ratio(median(ours), median(plain))
        targets.append(
            Target(
                name=f"(1c) Lambda environment free (billed), {task_label(task_ms)}",
                goal=f"<= {goal:g}x plain Mangum",
                measured=(
                    f"{fmt_ratio(measured)} ({fmt(median(ours))} vs {fmt(median(plain))} ms, "
                    f"{fmt(median(ours) - median(plain))} ms apart)"
                ),
                met=None if math.isnan(measured) else measured <= goal,
                why=_free_why_no_task(variants, goal, cpu_us, measured <= goal)
                if task_ms == NO_TASK
                else FREE_WHY_0_MS,
            )
        )
    return targets


def _free_why_no_task(variants: list[Variant], goal: float, cpu_us: dict[str, float], met: bool) -> str:
    ours, plain = _find(variants, TEMPLATE, NO_TASK), _find(variants, PLAIN, NO_TASK)
    without = _find(variants, WITHOUT_EXTENSION, NO_TASK)
    allowed = median(plain.free_ms) * (goal - 1)
    gap = median(ours.free_ms) - median(plain.free_ms)
    billed = [sum(math.ceil(ms) for ms in v.free_ms) / max(len(v.free_ms), 1) for v in (ours, plain)]
    why = (
        "both environments are free as their response is posted: the template's handler thread sends the "
        f"extension's `event/next` itself before it returns (see where the time goes). {goal:g}x leaves the "
        f"template {fmt(allowed)} ms more than plain Mangum; it takes {fmt(gap)} ms more: "
        f"{fmt(median(_function_ms(ours)) - median(_function_ms(plain)))} ms in the function before the response "
        "is posted (the request id, trace id and Lambda log keys, the request.completed line, the extension's "
        "`event/next` and INVOKE read), "
        f"{fmt(median(ours.received_ms) - median(plain.received_ms))} ms before it receives the invocation "
        "(the emulator hands the extension its INVOKE at the same moment, in threads of one Python process). "
        "Without the extension (`TASK_BACKEND=inline`, a diagnostic: its tasks would run before the response) the "
        f"template is free after {fmt(median(without.free_ms))} ms "
        f"({fmt_ratio(ratio(median(without.free_ms), median(plain.free_ms)))}): the extension's release costs "
        f"{fmt(median(_function_ms(ours)) - median(_function_ms(without)))} ms of the function's part, its INVOKE "
        f"{fmt(median(ours.received_ms) - median(without.received_ms))} ms of the emulator's. "
        "In-process (`bench.handler_cpu`: no extension, no Runtime API, logs to "
        f"/dev/null), a warm call costs {fmt(cpu_us[TEMPLATE], 1)} us of CPU against {fmt(cpu_us[PLAIN], 1)} us, "
        f"{fmt(cpu_us[QUIET], 1)} us without the request.completed line; a cold, once-per-invocation call a few "
        "times more. "
        f"Lambda bills in 1 ms steps: on average {fmt(billed[0])} against {fmt(billed[1])} ms billed per invocation"
    )
    if not met:
        why += (
            f". What would close it: {fmt(gap - allowed)} ms less work before each response, most of what the "
            "template adds there; that work is the behaviour and the log schema this issue keeps (request id, trace "
            "id, Lambda keys, request.completed) and the extension's `event/next`, without which no task would run "
            "after the response"
        )
    return why


FREE_WHY_0_MS = (
    "plain Mangum runs the task before posting its response, through the thread pool; the template after "
    "it, on the runner thread itself (a last `def` task has nothing behind it: no thread pool hand-over), "
    "with its task.succeeded line and the invocation's EMF line, then `event/next`: the "
    "'response to environment free' column"
)
