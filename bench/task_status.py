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
tracked tasks (one ``BatchWriteItem``), and untracked requests unchanged within noise. Then the
same app on Lambda (``bench.status_app``'s handlers in the runtime client against the Runtime API
emulator, as section 1): time to the response, and until the environment is free (the steps
after the response are written by the post-response extension, before it releases).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message

from bench.env import ROOT
from bench.model import Section, Table, Target, fmt, median, percentile
from infra.lambda_events import http_api_event
from infra.runtime_api import lambda_environment
from infra.servers import ServerProcess, free_port, wait_until_healthy
from shared.background import status_store

VARIANTS = ("tracking off", "untracked tasks", "1 tracked task", "3 tracked tasks")
UNTRACKED_NOISE = 0.10
"""Untracked requests in a tracking app: within 10% of tracking off (medians) counts as unchanged."""


def _apps() -> dict[str, tuple[ASGIApp, str]]:
    """``{variant: (app, kinds)}``: one app without tracking, one with it."""
    from bench.status_app import app_off, app_on

    return {
        "tracking off": (app_off, "u"),
        "untracked tasks": (app_on, "u"),
        "1 tracked task": (app_on, "t"),
        "3 tracked tasks": (app_on, "t,t,t"),
    }


LAMBDA_VARIANTS = {
    "tracking off": ("bench.status_app.handler_off", "u"),
    "untracked tasks": ("bench.status_app.handler_on", "u"),
    "1 tracked task": ("bench.status_app.handler_on", "t"),
    "3 tracked tasks": ("bench.status_app.handler_on", "t,t,t"),
}


def on_lambda(env: dict[str, str], invocations: int) -> dict[str, dict[str, list[float]]]:
    """The runtime client against the Runtime API emulator: ms to the response, ms until the environment is free."""
    handlers = sorted({handler for handler, _ in LAMBDA_VARIANTS.values()})
    samples: dict[str, dict[str, list[float]]] = {v: {"response": [], "free": []} for v in LAMBDA_VARIANTS}
    with ExitStack() as stack:
        environments = {handler: stack.enter_context(lambda_environment(handler, env=env)) for handler in handlers}
        for round_index in range(invocations + 2):
            for variant, (handler, kinds) in LAMBDA_VARIANTS.items():
                event = http_api_event("/run", query={"kinds": kinds})
                invocation = environments[handler].invoke(event, timeout=60).wait_free(60)
                if invocation.result.get("statusCode") != 200:
                    raise RuntimeError(f"{variant}: {invocation.body!r}")
                if round_index >= 2:  # two warm-up rounds
                    samples[variant]["response"].append(invocation.time_to_response * 1000)
                    samples[variant]["free"].append(invocation.time_to_free * 1000)
    return samples


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
        if completed.returncode != 0:
            raise RuntimeError(f"bench.task_status failed:\n{completed.stderr[-3000:]}")
        lambda_env = {key: env[key] for key in ("AWS_ENDPOINT_URL", "LOG_FORMAT")}
        lambda_samples = on_lambda(lambda_env, requests)
    finally:
        moto.close()
    measured = json.loads(completed.stdout.strip().splitlines()[-1])
    section = _section(measured["samples"], measured["calls"], requests, rounds)
    section.tables.append(_lambda_table(lambda_samples))
    off, untracked = (median(lambda_samples[v]["response"]) for v in ("tracking off", "untracked tasks"))
    spread = statistics.pstdev(lambda_samples["tracking off"]["response"])
    unchanged = section.targets[1]
    unchanged.measured += f"; on Lambda {fmt(untracked, 2)} ms vs {fmt(off, 2)} ms to the response"
    unchanged.met = bool(unchanged.met) and untracked - off <= max(UNTRACKED_NOISE * off, spread)
    return section


def _lambda_table(samples: dict[str, dict[str, list[float]]]) -> Table:
    table = Table(
        "On Lambda: the runtime client against the Runtime API emulator, moto's server on 127.0.0.1 (ms)",
        ["variant", "time to response: median (p95)", "added", "until the environment is free: median (p95)", "added"],
    )
    base = {key: median(samples["tracking off"][key]) for key in ("response", "free")}
    for variant, values in samples.items():
        row = [variant]
        for key in ("response", "free"):
            row += [
                f"{fmt(median(values[key]), 2)} ({fmt(percentile(values[key], 95), 2)})",
                "baseline" if variant == "tracking off" else fmt(median(values[key]) - base[key], 2),
            ]
        table.rows.append(row)
    return table


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
            "(9a) store writes before the response, per request",
            "at most 1, batched for several tracked tasks",
            ", ".join(f"{variant}: {fmt(count, 1)} BatchWriteItem" for variant, count in writes_before.items()),
            all(count <= 1 for count in writes_before.values()),
            "the queued records of a request are collected while it runs and written in one BatchWriteItem "
            "as its response starts; every later step is one UpdateItem after the response",
        ),
        Target(
            "(9b) untracked requests unchanged",
            f"not slower than tracking off beyond noise ({UNTRACKED_NOISE:.0%} of its median, or 1 std dev)",
            f"{fmt(untracked, 2)} ms vs {fmt(base_before, 2)} ms before the response; "
            f"DynamoDB calls: {_calls_cell(calls.get('untracked tasks', {}))}",
            not calls.get("untracked tasks") and untracked - base_before <= max(UNTRACKED_NOISE * base_before, spread),
            "an untracked task makes no store call; the tracking app adds one pure ASGI middleware",
        ),
    ]
    return Section(
        key="task_status",
        title="9. Task status: the cost of tracking a task",
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
