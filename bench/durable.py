"""Durable tasks: what sending a request's tasks to SQS costs, against running them in-process.

One app, one endpoint per task count (1 and 10), built twice from settings: once with the
tasks in-process (``InlineBackend``), once with ``DURABLE_TASKS`` routing them to SQS. The task
is a registered no-op, so the in-process side measures the task layer alone and the
difference is the enqueue: JSON encoding and size checks before the response (``accept``),
``SendMessageBatch`` after it. SQS is moto's in-process mock: its latency is not AWS's
(in-region ``SendMessageBatch`` typically takes a few milliseconds more), so read the
numbers as the template's own overhead.

``measure()`` returns plain numbers for the bench report; nothing here asserts on time.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from fastapi import BackgroundTasks, FastAPI
from fastapi.testclient import TestClient
from moto import mock_aws
from starlette.background import BackgroundTasks as StarletteBackgroundTasks

from bench.model import percentile
from shared import aws
from shared.app import create_app
from shared.background import build_executor, task
from shared.logs import configure_logging
from shared.settings import get_settings

TASK_COUNTS = (1, 10)


@task("bench.durable.noop")
def noop(index: int) -> None:
    return None


def _app(service: str) -> FastAPI:
    app = create_app(service)
    for count in TASK_COUNTS:

        def add(background_tasks: BackgroundTasks, count: int = count) -> dict[str, int]:
            for index in range(count):
                background_tasks.add_task(noop, index)
            return {"tasks": count}

        app.post(f"/tasks/{count}")(add)
    return app


@contextmanager
def _environment(durable: bool) -> Iterator[None]:
    env = {"DURABLE_TASKS": "bench.durable.noop" if durable else "", "LOG_LEVEL": "INFO", "LOG_FORMAT": "json"}
    with mock_aws(), mock.patch.dict(os.environ, env):
        get_settings.cache_clear()
        aws.reset_clients()
        try:
            if durable:
                url = aws.sqs().create_queue(QueueName="bench-durable")["QueueUrl"]
                os.environ["TASK_QUEUE_URL"] = url
                get_settings.cache_clear()
            yield
        finally:
            aws.reset_clients()
            get_settings.cache_clear()


def _empty_queue() -> None:
    """moto's SendMessage scans the whole queue, so a growing queue would slow every send."""
    url = get_settings().task_queue_url
    while url and (messages := aws.sqs().receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages")):
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        aws.sqs().delete_message_batch(QueueUrl=url, Entries=entries)  # type: ignore[arg-type]


def _timed(samples: list[float], call: Callable[[], Any], repeat: int) -> None:
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
        _empty_queue()


def _summary(samples: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(samples),
        "p50": percentile(samples, 50),
        "p95": percentile(samples, 95),
        "samples": float(len(samples)),
    }


def _run(durable: bool, requests: int, warmup: int) -> dict[str, dict[str, dict[str, float]]]:
    results: dict[str, dict[str, dict[str, float]]] = {}
    with _environment(durable):
        app = _app("bench-durable" if durable else "bench-inline")
        executor = build_executor()
        with TestClient(app) as client:
            for count in TASK_COUNTS:
                post = functools.partial(client.post, f"/tasks/{count}")
                _timed([], post, warmup)
                request_ms: list[float] = []
                _timed(request_ms, post, requests)

                def take(count: int = count) -> None:
                    background = StarletteBackgroundTasks()
                    for index in range(count):
                        background.add_task(noop, index)
                    executor.take(background)

                take_ms: list[float] = []
                _timed(take_ms, take, requests)
                results[str(count)] = {
                    "request_ms": _summary(request_ms),
                    "before_response_us": {k: v * 1000 for k, v in _summary(take_ms).items() if k != "samples"},
                }
    return results


def measure(requests: int = 200, warmup: int = 20) -> dict[str, Any]:
    """Per-request cost with 1 and 10 tasks, in-process vs durable (SQS, moto).

    ``request_ms``: the whole request through Starlette's TestClient, which waits for the
    post-response work (running the tasks, or sending them). ``before_response_us``: what
    ``TaskExecutor.take`` adds before the response is sent (accept + ``task.queued``).
    ``enqueue_overhead_ms``: durable minus in-process medians of ``request_ms``.
    """
    configure_logging("bench", stream=open(os.devnull, "w"))  # noqa: SIM115 (lives as long as logging)
    inline = _run(False, requests, warmup)
    durable = _run(True, requests, warmup)
    overhead = {count: durable[count]["request_ms"]["p50"] - inline[count]["request_ms"]["p50"] for count in inline}
    return {
        "requests": requests,
        "inline": inline,
        "durable": durable,
        "enqueue_overhead_ms": overhead,
        "sqs": "moto (in-process mock)",
    }


if __name__ == "__main__":
    import json

    print(json.dumps(measure(), indent=2))
