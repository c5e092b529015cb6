"""Measurement 8: what tracking a task costs, before the response and after it (docs/task-status.md).

In a child process, against moto's server in a process of its own on 127.0.0.1 (the status
table created as ``make run`` creates it): in-process ASGI calls (no socket) of one function
whose endpoint queues no-op tasks, tracked or not, with the ``inline`` backend, as in a
container. Each request is timed in wall-clock time: up to its response's first message
(``http.response.start``: what the client waits for); from there to the end of its tasks (the
event loop's time); and until the status writes of those steps, made by the recorder's own
thread in a container, are done. Variants interleaved, round by round: the same app with
tracking off (the baseline), tracking on but untracked tasks (must match the baseline: no store
call), one tracked task, three tracked tasks. DynamoDB calls are counted from botocore's events.

The target of issue 31: at most one store write before the response, whatever the number of
tracked tasks (one ``BatchWriteItem``), and untracked requests unchanged within noise. On Lambda
the same code makes the same calls (the batch before the response; the updates in the
post-response extension, before the freeze): not measured here separately.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fastapi import BackgroundTasks
from starlette.types import ASGIApp, Message

from bench.env import ROOT
from bench.model import Section, Table, Target, fmt, median, percentile
from infra.servers import ServerProcess, free_port, wait_until_healthy
from shared.background import status_store

VARIANTS = ("tracking off", "untracked tasks", "1 tracked task", "3 tracked tasks")
UNTRACKED_NOISE = 0.10
"""Untracked requests in a tracking app: within 10% of tracking off (medians) counts as unchanged."""


def _apps() -> dict[str, tuple[ASGIApp, str]]:
    """``{variant: (app, kinds)}``: one app without tracking, one with it."""
    from shared.app import create_app
    from shared.background import task

    tracked = task("bench.status.tracked", tracked=True)(_tracked)
    untracked = task("bench.status.untracked")(_untracked)

    def build(track: bool) -> ASGIApp:
        app = create_app(f"bench-status-{'on' if track else 'off'}", track_tasks=track)

        @app.post("/run")
        async def run(kinds: str, background_tasks: BackgroundTasks) -> dict[str, str]:
            for kind in kinds.split(","):
                background_tasks.add_task(tracked if kind == "t" else untracked)
            return {"queued": kinds}

        return app

    off, on = build(False), build(True)
    return {
        "tracking off": (off, "u"),
        "untracked tasks": (on, "u"),
        "1 tracked task": (on, "t"),
        "3 tracked tasks": (on, "t,t,t"),
    }


async def _tracked() -> None:
    return None


async def _untracked() -> None:
    return None


async def _request(app: ASGIApp, kinds: str) -> tuple[float, float, float]:
    """(ms until the response starts, ms from there until the tasks ended, ms until their status was written)."""
    query = f"kinds={kinds}".encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/run",
        "raw_path": b"/run",
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"content-length", b"0")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    started = time.perf_counter()
    marks: list[float] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            if message["status"] != 200:
                raise RuntimeError(f"/run answered {message['status']}")
            marks.append(time.perf_counter())

    await app(scope, receive, send)
    ended = time.perf_counter()
    status_store.drain()  # the steps after the response, written by the recorder's own thread
    written = time.perf_counter()
    return (marks[0] - started) * 1000, (ended - marks[0]) * 1000, (written - marks[0]) * 1000


def in_process(requests: int, rounds: int) -> dict[str, Any]:
    """Run every variant, interleaved; the samples and the DynamoDB calls per request of each."""
    from shared import aws
    from shared.logs import configure_logging

    devnull = open(os.devnull, "w")  # noqa: SIM115 (lives as long as logging)
    configure_logging("bench", stream=devnull)
    apps = _apps()
    calls: list[str] = []
    aws.client("dynamodb").meta.events.register("before-call.dynamodb", lambda model, **_: calls.append(model.name))

    async def measure() -> dict[str, Any]:
        samples: dict[str, dict[str, list[float]]] = {v: {"before": [], "after": [], "written": []} for v in VARIANTS}
        counted: dict[str, dict[str, int]] = {}
        for variant in VARIANTS:  # warm-up: clients, connections, the first write
            app, kinds = apps[variant]
            for _ in range(3):
                await _request(app, kinds)
        for round_index in range(rounds):
            order = VARIANTS if round_index % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                app, kinds = apps[variant]
                for _ in range(requests):
                    calls.clear()
                    before, after, written = await _request(app, kinds)
                    samples[variant]["before"].append(before)
                    samples[variant]["after"].append(after)
                    samples[variant]["written"].append(written)
                    if round_index == 0:
                        for name in calls:
                            counted.setdefault(variant, {}).setdefault(name, 0)
                            counted[variant][name] += 1
        per_request = {v: {n: c / requests for n, c in counted.get(v, {}).items()} for v in VARIANTS}
        return {"samples": samples, "calls": per_request}

    return asyncio.run(measure())


def measure(workdir: Path, requests: int = 30, rounds: int = 4) -> Section:
    port = free_port()
    moto = ServerProcess([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], {}, port)
    try:
        wait_until_healthy(f"{moto.base_url}/moto-api/", moto.process)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "AWS_ENDPOINT_URL": moto.base_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "LOG_FORMAT": "json",
        }
        command = [sys.executable, "-m", "bench.task_status", str(workdir), str(requests), str(rounds)]
        completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)  # noqa: S603 - our own interpreter
    finally:
        moto.close()
    if completed.returncode != 0:
        raise RuntimeError(f"bench.task_status failed:\n{completed.stderr[-3000:]}")
    measured = json.loads(completed.stdout.strip().splitlines()[-1])
    return _section(measured["samples"], measured["calls"], requests, rounds)


def _calls_cell(calls: dict[str, float]) -> str:
    return ", ".join(f"{fmt(count, 1)} {name}" for name, count in sorted(calls.items())) or "none"


def _section(
    samples: dict[str, dict[str, list[float]]], calls: dict[str, dict[str, float]], requests: int, rounds: int
) -> Section:
    base_before = median(samples["tracking off"]["before"])
    base_after = median(samples["tracking off"]["after"])
    table = Table(
        "In-process ASGI request, inline backend, moto's server on 127.0.0.1 (wall-clock ms)",
        [
            "variant",
            "before the response: median (p95)",
            "added before",
            "after the response, the event loop: median (p95)",
            "added after",
            "after the response, until the status is written: median (p95)",
            "DynamoDB calls per request",
        ],
    )
    for variant in VARIANTS:
        before, after, written = (samples[variant][key] for key in ("before", "after", "written"))
        table.rows.append(
            [
                variant,
                f"{fmt(median(before), 2)} ({fmt(percentile(before, 95), 2)})",
                "baseline" if variant == "tracking off" else fmt(median(before) - base_before, 2),
                f"{fmt(median(after), 2)} ({fmt(percentile(after, 95), 2)})",
                "baseline" if variant == "tracking off" else fmt(median(after) - base_after, 2),
                f"{fmt(median(written), 2)} ({fmt(percentile(written, 95), 2)})",
                _calls_cell(calls.get(variant, {})),
            ]
        )
    writes_before = {v: calls.get(v, {}).get("BatchWriteItem", 0.0) for v in VARIANTS[2:]}
    untracked = median(samples["untracked tasks"]["before"])
    spread = statistics.pstdev(samples["tracking off"]["before"]) if len(samples["tracking off"]["before"]) > 1 else 0
    targets = [
        Target(
            "(8a) store writes before the response, per request",
            "at most 1, batched for several tracked tasks",
            ", ".join(f"{variant}: {fmt(count, 1)} BatchWriteItem" for variant, count in writes_before.items()),
            all(count <= 1 for count in writes_before.values()),
            "the queued records of a request are collected while it runs and written in one BatchWriteItem "
            "as its response starts; every later step is one UpdateItem after the response",
        ),
        Target(
            "(8b) untracked requests unchanged",
            f"within noise ({UNTRACKED_NOISE:.0%} of the median, or one standard deviation)",
            f"{fmt(untracked, 2)} ms vs {fmt(base_before, 2)} ms before the response; "
            f"DynamoDB calls: {_calls_cell(calls.get('untracked tasks', {}))}",
            not calls.get("untracked tasks")
            and abs(untracked - base_before) <= max(UNTRACKED_NOISE * base_before, spread),
            "an untracked task makes no store call; the tracking app adds one pure ASGI middleware",
        ),
    ]
    return Section(
        key="task_status",
        title="8. Task status: the cost of tracking a task",
        intro=(
            f"{requests} requests per variant and round, {rounds} rounds, variants interleaved "
            "(bench/task_status.py). Before the response: what the client waits for (the one batch of queued "
            "records); after: the event loop's time, then until the recorder's thread has written every step."
        ),
        tables=[table],
        targets=targets,
    )


if __name__ == "__main__":
    _, workdir_arg, requests_arg, rounds_arg = sys.argv
    from infra.durable_resources import create_status_table
    from shared.settings import get_settings

    create_status_table(get_settings().task_status_table)
    print(json.dumps(in_process(int(requests_arg), int(rounds_arg))))
