"""Measurement 4: what the task layer adds per task, in microseconds, in one process.

Both sides run the same no-op task once per simulated request: plain Starlette awaits
its ``BackgroundTasks``; the template passes them through ``TaskExecutor.take`` (accept,
``task.queued``) and awaits what it returns (``InlineBackend``: ``task.started`` at DEBUG, counted
but not written, the task isolated, ``task.succeeded``). Logs go through the real pipeline (JSON renderer, stdlib
handler) into ``os.devnull``. A third variant runs the template with ``LOG_LEVEL=WARNING``
so the report can split the overhead into logging and the rest.

A second table times whole requests the same way (an in-process ASGI call, no network):
the tutorial's endpoint in plain FastAPI against the notifications function, which shows
what the container numbers of measurement 2 are made of.

Times are CPU time of this process (``time.process_time``, every thread included): on a
shared machine other processes then slow neither side.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import logging
import os
import pstats
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from starlette.background import BackgroundTasks
from starlette.types import ASGIApp, Message

from bench import line_cost
from bench.model import Distribution, Section, Table, fmt, fmt_ratio, median, percentile, ratio
from shared.background import build_executor
from shared.background.executor import TaskExecutor
from shared.logs import configure_logging, get_logger
from shared.settings import get_settings

EMAIL_PATH = "/send-notification/jane.doe@example.com"


async def _noop_async() -> None:
    return None


def _noop_sync() -> None:
    return None


Runner = Callable[[int], Awaitable[None]]


def _plain(func: Callable[[], object]) -> Runner:
    async def run(requests: int) -> None:
        for _ in range(requests):
            background = BackgroundTasks()
            background.add_task(func)
            await background()

    return run


def _template(func: Callable[[], object], executor: TaskExecutor) -> Runner:
    async def run(requests: int) -> None:
        for _ in range(requests):
            background = BackgroundTasks()
            background.add_task(func)
            await executor.take(background)()

    return run


def _asgi(app: ASGIApp) -> Runner:
    """POST the tutorial's endpoint straight into ``app``: no socket, no server."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": EMAIL_PATH,
        "raw_path": EMAIL_PATH.replace("@", "%40").encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"content-length", b"0")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"{EMAIL_PATH} answered {message['status']}")

    async def run(requests: int) -> None:
        for _ in range(requests):
            await app(dict(scope), receive, send)

    return run


@dataclass
class Variant:
    label: str
    group: str
    runner: Runner
    log_level: int = logging.INFO
    samples_us: list[float] = field(default_factory=list)


async def _measure(variants: list[Variant], requests: int, rounds: int) -> None:
    root = logging.getLogger()
    for variant in variants:  # warm-up: thread pool started, code paths and caches hot
        root.setLevel(variant.log_level)
        await variant.runner(max(requests // 10, 10))
    for round_index in range(rounds):
        ordered = variants if round_index % 2 == 0 else variants[::-1]
        for variant in ordered:
            root.setLevel(variant.log_level)
            gc.collect()
            started = time.process_time()
            await variant.runner(requests)
            variant.samples_us.append((time.process_time() - started) / requests * 1e6)
    root.setLevel(logging.INFO)


# Stages of one log line: (file name ends with, function) -> what it is. Shares use cumulative time.
STAGES = {
    ("logging/__init__.py", "__init__"): "LogRecord built twice (Logger.makeRecord, then ProcessorFormatter's copy)",
    ("structlog/_frames.py", "_find_first_app_frame_and_name"): "structlog's findCaller stack walk",
    ("structlog/_config.py", "bind"): "lazy logger re-assembled on every call (cache_logger_on_first_use=False)",
    ("structlog/_base.py", "_process_event"): "structlog processor chain",
    ("json/__init__.py", "dumps"): "JSON rendering",
    ("logging/__init__.py", "flush"): "stream flush after every line",
}


def profile_log_line(lines: int = 2000) -> tuple[float, list[tuple[str, float]]]:
    """Time ``task.started`` lines through the configured pipeline, then profile them.

    Returns microseconds per line and each stage's share of the profiled time (cProfile
    slows everything down; the shares hold). Stages may nest, so shares need not add up.
    """
    log = get_logger("shared.background")
    fields = {"task": "notifications.write_notification", "task_id": "0" * 32, "backend": "inline", "attempt": 1}
    for _ in range(lines // 10):
        log.info("task.started", **fields)
    started = time.process_time()
    for _ in range(lines):
        log.info("task.started", **fields)
    per_line_us = (time.process_time() - started) / lines * 1e6
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(lines):
        log.info("task.started", **fields)
    profiler.disable()
    rows = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(row[2] for row in rows.values()) or 1.0
    shares: dict[str, float] = {}
    for (filename, _, function), row in rows.items():
        for (suffix, name), stage in STAGES.items():
            if function == name and filename.endswith(suffix):
                shares[stage] = shares.get(stage, 0.0) + row[3] / total * 100
    return per_line_us, sorted(shares.items(), key=lambda item: -item[1])


PLAIN = "plain Starlette BackgroundTasks"
LAYER = "template (task layer)"
QUIET = "template, logs off (LOG_LEVEL=WARNING)"


def measure(workdir: Path, requests: int = 2000, rounds: int = 7) -> Section:
    os.environ["LOG_FORMAT"] = "json"
    os.environ["NOTIFICATION_LOG_PATH"] = str(workdir / "notifications.log")
    get_settings.cache_clear()
    devnull = open(os.devnull, "w")  # noqa: SIM115 (lives as long as logging: later sections log to it)
    configure_logging("bench", stream=devnull)
    from bench.baselines import bare_app
    from functions.notifications.app import app as notifications

    executor = build_executor()
    tasks: list[Variant] = []
    for group, func in (("async def", _noop_async), ("def (thread pool)", _noop_sync)):
        tasks += [
            Variant(PLAIN, group, _plain(func)),
            Variant(LAYER, group, _template(func, executor)),
            Variant(QUIET, group, _template(func, executor), logging.WARNING),
        ]
    whole = [
        Variant("bare FastAPI, plain BackgroundTasks", "request", _asgi(bare_app.app)),
        Variant("template: functions.notifications", "request", _asgi(notifications)),
        Variant("template, logs off (LOG_LEVEL=WARNING)", "request", _asgi(notifications), logging.WARNING),
    ]
    asyncio.run(_measure(tasks, requests, rounds))
    asyncio.run(_measure(whole, max(requests // 4, 10), rounds))
    per_line_us, heaviest = profile_log_line(max(requests, 100))
    get_settings.cache_clear()
    section = _section(tasks, whole, requests, rounds)
    listed = ", ".join(f"{name} {share:.0f}%" for name, share in heaviest)
    section.notes.append(
        f"One log line through the pipeline costs {fmt(per_line_us, 1)} us here. Where it goes (cProfile, share of "
        f"the time, stages may nest): {listed}."
    )
    lines = max(requests * 10, 1000)
    costs = line_cost.measure(workdir, lines, rounds)
    section.tables.append(line_cost.table(costs, lines, rounds))
    section.notes.append(line_cost.note(costs))
    return section


def _section(tasks: list[Variant], whole: list[Variant], requests: int, rounds: int) -> Section:
    per_task = Table(
        "Per simulated request with one no-op task (CPU microseconds; median and p95 over rounds)",
        ["task", "variant", "median us", "p95 us", "overhead vs plain, us"],
    )
    notes: list[str] = []
    for group in dict.fromkeys(variant.group for variant in tasks):
        plain, layer, quiet = (variant for variant in tasks if variant.group == group)
        base = median(plain.samples_us)
        for variant in (plain, layer, quiet):
            overhead = "baseline" if variant is plain else fmt(median(variant.samples_us) - base, 1)
            per_task.rows.append(
                [
                    group,
                    variant.label,
                    fmt(median(variant.samples_us), 1),
                    fmt(percentile(variant.samples_us, 95), 1),
                    overhead,
                ]
            )
        logging_us = median(layer.samples_us) - median(quiet.samples_us)
        notes.append(
            f"{group}: the layer adds {fmt(median(layer.samples_us) - base, 1)} us per task, of which "
            f"{fmt(logging_us, 1)} us is its two log lines (task.queued, task.succeeded; "
            f"about {fmt(logging_us / 2, 1)} us each) and {fmt(median(quiet.samples_us) - base, 1)} us the rest "
            "(QueuedTask and its id, isolation, the timeout check, the filtered log calls)."
        )
    per_request = Table(
        f"Whole request, in-process ASGI call of `POST {EMAIL_PATH}` (CPU microseconds)",
        ["variant", "median us", "p95 us", "ratio", "overhead vs bare, us"],
    )
    bare = whole[0]
    for variant in whole:
        base = median(bare.samples_us)
        per_request.rows.append(
            [
                variant.label,
                fmt(median(variant.samples_us), 0),
                fmt(percentile(variant.samples_us, 95), 0),
                "baseline" if variant is bare else fmt_ratio(ratio(median(variant.samples_us), base)),
                "baseline" if variant is bare else fmt(median(variant.samples_us) - base, 0),
            ]
        )
    return Section(
        key="task_overhead",
        title="4. Per-task overhead of the task layer",
        intro=(
            f"{requests} simulated requests of one no-op task per round ({max(requests // 4, 10)} whole requests), "
            f"{rounds} rounds, variants interleaved, one process; logs through the real pipeline into os.devnull. "
            "CPU time of the process (every thread), so other processes on the machine slow neither side."
        ),
        tables=[per_task, per_request],
        notes=notes,
        distributions=[Distribution(f"{v.label} [{v.group}]", v.samples_us) for v in [*tasks, *whole]],
        unit="us",
    )
