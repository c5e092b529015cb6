"""The task lifecycle: every accepted task ends in exactly one terminal event, whatever cuts it.

The loss paths run a real uvicorn process (``shared.serve``) against moto's server, or an
unreachable queue; the lifecycle's own guarantees (one end, ``task.lost`` at exit) run in a
subprocess; the metrics are checked against every ``task.*`` event the code can log.
"""

from __future__ import annotations

import ast
import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI
from fastapi.testclient import TestClient
from starlette.background import BackgroundTask

from bench import handoff_tasks
from infra.servers import ServerProcess, parse_json_lines, start_function
from shared.app import create_app
from shared.background import lifecycle
from shared.background.events import TERMINAL
from shared.background.task import QueuedTask
from shared.metrics.names import COUNTERS, LOSSES, NOT_COUNTED
from tests.support.logs import LogCapture
from tests.support.sqs_queues import DurableAws, FakeLambdaContext, durable_aws_server, subprocess_env

ROOT = Path(__file__).resolve().parent.parent
TASK_MODULES = "bench.handoff_tasks"


def of(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == name]


def ends_by_task(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The terminal events of each task_id, in order."""
    ends: dict[str, list[str]] = {}
    for event in events:
        if event.get("event") in TERMINAL and "task_id" in event:
            ends.setdefault(event["task_id"], []).append(event["event"])
    return ends


@pytest.fixture
def durable_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[DurableAws]:
    with durable_aws_server(monkeypatch, TASK_MODULES=TASK_MODULES) as resources:
        yield resources


def start_handoff_server(env: dict[str, str]) -> ServerProcess:
    return start_function("handoff", env, "--app", "bench.handoff_app:app")


def stop_after(server: ServerProcess, seconds: float) -> tuple[int, list[dict[str, Any]]]:
    time.sleep(seconds)
    server.process.send_signal(signal.SIGTERM)
    try:
        exit_code = server.process.wait(40)
    finally:
        output = server.output()
        server.close()
    return exit_code, parse_json_lines(output)


# --- loss paths -------------------------------------------------------------------------------


def test_a_handoff_cut_by_the_end_of_the_grace_ends_in_task_lost_with_its_ids(tmp_path: Path) -> None:
    """SQS unreachable: the second task's handoff is still being tried when the grace ends."""
    done = tmp_path / "done.txt"
    env = {
        "SHUTDOWN_GRACE_SECONDS": "3",
        "TASK_QUEUE_URL": "http://127.0.0.1:9/000000000000/unreachable",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "TASK_ENQUEUE_ATTEMPTS": "8",
        "LOG_FORMAT": "json",
    }
    server = start_handoff_server(env)
    response = httpx.post(
        f"{server.base_url}/tasks/slow",
        params={"path": str(done), "label": "s", "count": 2, "seconds": 2},
        headers={"x-request-id": "req-cut-by-grace"},
        timeout=10,
    )
    assert response.status_code == 200
    exit_code, events = stop_after(server, 0.5)

    assert exit_code == 0
    queued = of(events, "task.queued")
    assert len(queued) == 2
    ends = ends_by_task(events)
    assert {task["task_id"]: len(ends.get(task["task_id"], [])) for task in queued} == {
        task["task_id"]: 1 for task in queued
    }, f"exactly one terminal event each: {ends}"
    [lost] = of(events, "task.lost")
    assert lost["task_id"] == queued[1]["task_id"]
    assert lost["request_id"] == "req-cut-by-grace"
    assert lost["reason"] == "shutdown" and lost["error"]


def test_five_registered_sync_tasks_with_a_short_grace_lose_none_the_running_one_is_handed_off(
    durable_server: DurableAws, tmp_path: Path
) -> None:
    done = tmp_path / "done.txt"
    server = start_handoff_server(subprocess_env(durable_server, SHUTDOWN_GRACE_SECONDS="1"))
    response = httpx.post(
        f"{server.base_url}/tasks/slow",
        params={"path": str(done), "label": "s", "count": 5, "seconds": 2},
        timeout=10,
    )
    assert response.status_code == 200
    exit_code, events = stop_after(server, 0.5)

    assert exit_code == 0
    queued = {e["task_id"] for e in of(events, "task.queued")}
    handed_off = {e["task_id"] for e in of(events, "task.handed_off")}
    assert len(queued) == 5
    assert handed_off == queued, "every one handed off, the running one included"
    assert not of(events, "task.cancelled") and not of(events, "task.lost")
    assert all(ends == ["task.handed_off"] for ends in ends_by_task(events).values())

    from shared.worker import Worker

    messages = durable_server.receive_all()
    assert {json.loads(m["Body"])["task_id"] for m in messages} == queued
    worker = Worker()
    try:
        assert worker.handle(durable_server.event(messages), FakeLambdaContext()) == {"batchItemFailures": []}
    finally:
        worker.close()
    completed = handoff_tasks.completions(done)
    assert {f"s-{index}" for index in range(5)} <= set(completed), "the worker ran all five, the cut one again"


# --- the lifecycle itself ---------------------------------------------------------------------


def _run_python(code: str, **env: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "LOG_FORMAT": "json", "AWS_DEFAULT_REGION": "us-east-1", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return parse_json_lines(result.stdout)


ACCEPT_ONE = """
import structlog
from shared.logs import configure_logging
from shared.background import lifecycle
from shared.background.task import QueuedTask
configure_logging("lifecycle-test")
structlog.contextvars.bind_contextvars(request_id="req-at-exit")
lifecycle.accept(QueuedTask(print, (), {}, "tests.open", task_id="t-open"), "inline")
"""


@pytest.mark.parametrize(
    ("ending", "reason"),
    [
        ("", "the process exited"),
        ("import sys; sys.exit(4)", "the process exited"),
        ("lifecycle.exit_process(3, 'a watchdog')", "exit 3: a watchdog"),
        (
            "import os, signal; signal.signal(signal.SIGTERM, lambda *_: exit(0)); os.kill(os.getpid(), 15)",
            "",
        ),
    ],
    ids=["normal-exit", "sys-exit", "watchdog-exit", "sigterm"],
)
def test_a_task_still_open_when_the_process_exits_is_logged_lost_with_its_ids(ending: str, reason: str) -> None:
    events = _run_python(ACCEPT_ONE + ending)
    [lost] = of(events, "task.lost")
    assert (lost["task_id"], lost["request_id"], lost["task"]) == ("t-open", "req-at-exit", "tests.open")
    assert lost["reason"] == (reason or "the process exited")


def test_a_task_ends_once_a_second_end_is_reported_not_logged_as_terminal(logs: LogCapture) -> None:
    task = QueuedTask(print, (), {}, "tests.once")
    lifecycle.accept(task, "inline")
    fields = lifecycle.task_fields(task, "inline")

    assert lifecycle.end("task.succeeded", fields) is True
    assert lifecycle.end("task.failed", fields, level="error") is False

    assert [e["event"] for e in logs.events if e.get("task_id") == task.task_id] == [
        "task.queued",
        "task.succeeded",
        "task.end_repeated",
    ]
    [repeated] = logs.named("task.end_repeated")
    assert (repeated["first_end"], repeated["repeated"]) == ("task.succeeded", "task.failed")
    assert lifecycle.still_open() == []
    with pytest.raises(ValueError, match="not a terminal task event"):
        lifecycle.end("task.started", fields)


# --- metrics: from the event stream ---------------------------------------------------------


def _task_events_in_code() -> set[str]:
    """Every ``"task.*"`` string literal logged as an event in shared/ and functions/."""
    names: set[str] = set()
    for path in [*ROOT.glob("shared/**/*.py"), *ROOT.glob("functions/**/*.py")]:
        if path.name == "tracing.py":  # span attribute names (task.name, task.id...), not events
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.startswith("task.")
                and node.value[5:].replace("_", "").isalpha()
                and node.value[5:].islower()
            ):
                names.add(node.value)
    return names


def test_every_task_event_the_code_can_log_has_a_counter() -> None:
    in_code = _task_events_in_code()
    assert {"task.queued", "task.lost", "task.handed_off", "task.handoff_failed"} <= in_code
    assert in_code - set(COUNTERS) - set(NOT_COUNTED) == set()
    assert set(COUNTERS) >= TERMINAL


def test_a_handoff_moves_tasks_handed_off_and_a_refused_one_the_loss_counters(
    monkeypatch: pytest.MonkeyPatch, logs: LogCapture, tmp_path: Path
) -> None:
    from prometheus_client import REGISTRY

    from shared import metrics
    from shared.background import build_executor
    from shared.background.runner import run_tasks
    from shared.background.task import QueuedTask
    from shared.settings import get_settings
    from tests.support.sqs_queues import durable_aws

    def count(metric: str) -> float:
        return sum(
            sample.value
            for family in REGISTRY.collect()
            for sample in family.samples
            if sample.name == f"{metric}_total" and sample.labels.get("task") == "tests.handoff.work"
        )

    def work(label: str) -> QueuedTask:
        return QueuedTask(handoff_tasks.work, (str(tmp_path / "d"), label, 0.0), {}, "tests.handoff.work", timeout=1.0)

    monkeypatch.setenv("METRICS", "prometheus")
    with durable_aws(monkeypatch, TASK_ENQUEUE_ATTEMPTS="1") as resources:
        metrics.reset()
        build_executor()
        before = {metric: count(metric) for metric in ("tasks_handed_off", *LOSSES)}
        # Less time left than the task declares: handed off.
        asyncio.run(run_tasks([work("a")], "inline", deadline=time.monotonic() + 0.5))
        assert count("tasks_handed_off") == before["tasks_handed_off"] + 1
        # The queue gone and no time left: refused by the queue, and lost.
        monkeypatch.setenv("TASK_QUEUE_URL", resources.queues.url + "-missing")
        get_settings.cache_clear()
        build_executor()
        asyncio.run(run_tasks([work("b")], "inline", deadline=time.monotonic() - 0.1))
    metrics.reset()
    assert {metric: count(metric) - before[metric] for metric in LOSSES} == {
        "tasks_lost": 1,
        "tasks_handoff_failed": 1,
    }
    assert [e["event"] for e in logs.events if e.get("event") in TERMINAL] == ["task.handed_off", "task.lost"]


# --- FastAPI's own ways to run a task ---------------------------------------------------------


class Wrapped(BackgroundTask):
    """A task whose ``__call__`` wraps the call, as FastAPI's users write them."""

    calls: ClassVar[list[str]] = []

    async def __call__(self) -> None:
        Wrapped.calls.append("before")
        await super().__call__()
        Wrapped.calls.append("after")


def test_a_background_task_subclass_runs_through_its_own_call(logs: LogCapture) -> None:
    ran: list[str] = []
    app = create_app("subclass-test")

    @app.get("/")
    async def home(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.tasks.append(Wrapped(ran.append, "inner"))
        return {"ok": "yes"}

    Wrapped.calls = []
    with TestClient(app) as client:
        assert client.get("/").status_code == 200
    assert (Wrapped.calls, ran) == (["before", "after"], ["inner"])
    [succeeded] = logs.named("task.succeeded")
    assert succeeded["task"].endswith("append")


def test_fastapi_records_a_telemetry_span_per_background_task_with_the_layer_installed() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app("telemetry-test", telemetry={"tracer_provider": provider})

    def first() -> None:
        return None

    async def second() -> None:
        return None

    @app.get("/")
    async def home(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(first)
        background_tasks.add_task(second)
        return {"ok": "yes"}

    with TestClient(app) as client:
        assert client.get("/").status_code == 200
    spans = [span for span in exporter.get_finished_spans() if span.name == "fastapi.background_task"]
    assert [span.attributes["code.function.name"] for span in spans] == [
        f"{__name__}.{first.__qualname__}",
        f"{__name__}.{second.__qualname__}",
    ]


def test_fastapi_app_built_by_hand_and_installed_keeps_the_spans() -> None:
    """``install(FastAPI(...))``, not only ``create_app``: the layer runs each task inside FastAPI's span."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from shared.background.install import install

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = FastAPI(telemetry={"tracer_provider": provider})
    install(app)

    @app.get("/")
    async def home(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(asyncio.sleep, 0)
        return {"ok": "yes"}

    with TestClient(app) as client:
        assert client.get("/").status_code == 200
    assert [span.name for span in exporter.get_finished_spans()].count("fastapi.background_task") == 1
