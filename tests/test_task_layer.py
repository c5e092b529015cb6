"""The task layer: isolation, structured logs, request ids, timeouts, configuration."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import structlog
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import PlainTextResponse
from fastapi.testclient import TestClient

import shared.logs
from infra.servers import eventually
from shared.app import create_app
from shared.background import TaskRejected, running, task
from shared.background.inline import InlineBackend
from shared.background.install import TaskRoute, install
from shared.background.task import QueuedTask
from shared.ids import new_id
from shared.logs import _IsoTimestamp, configure_logging, get_logger
from shared.settings import get_settings
from shared.validation import ID_PATTERN
from tests.support.logs import LogCapture

EMAIL = "jane.doe@example.com"


class Boom(Exception):
    pass


def succeed(results: list[int], index: int) -> None:
    results.append(index)


async def succeed_async(results: list[int], index: int) -> None:
    await asyncio.sleep(0)
    results.append(index)


def fail(index: int) -> None:
    raise Boom(f"task {index} failed")


@task("tests.sleepy", timeout=0.05)
async def sleepy(results: list[str]) -> None:
    await asyncio.sleep(5)
    results.append("woke up")


def blocking_sleepy(seconds: float) -> None:
    threading.Event().wait(seconds)


def record_thread(threads: list[int]) -> None:
    threads.append(threading.get_ident())


def greet(email: str, greeting: str) -> None:
    pass


def build_app(results: list[int], failing: set[int], count: int) -> FastAPI:
    app = create_app("tasktest")

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        for index in range(count):
            if index in failing:
                background_tasks.add_task(fail, index)
            elif index % 2:
                background_tasks.add_task(succeed_async, results, index)
            else:
                background_tasks.add_task(succeed, results, index)
        return {"status": "queued"}

    return app


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    yield monkeypatch
    get_settings.cache_clear()


def capture_logs_with(settings_env: pytest.MonkeyPatch, **env: str) -> LogCapture:
    """The logging pipeline configured anew under ``env``, as a process started with it would be."""
    for name, value in env.items():
        settings_env.setenv(name, value)
    get_settings.cache_clear()
    capture = LogCapture()
    configure_logging("tests", stream=capture.stream, cache_loggers=False)
    return capture


@pytest.mark.parametrize(("count", "failing"), [(5, {0}), (6, {2, 3}), (10, {1, 4, 9}), (4, {0, 1, 2, 3})])
def test_failing_tasks_never_skip_the_others(logs: LogCapture, count: int, failing: set[int]) -> None:
    results: list[int] = []
    with TestClient(build_app(results, failing, count)) as client:
        response = client.post("/work")

    assert response.status_code == 200
    assert response.json() == {"status": "queued"}
    assert sorted(results) == [i for i in range(count) if i not in failing]
    assert len(logs.named("task.succeeded")) == count - len(failing)
    failures = logs.named("task.failed")
    assert len(failures) == len(failing)
    for failure in failures:
        assert failure["task"] == f"{__name__}.fail"
        assert failure["level"] == "error"
        assert failure["error_type"] == "Boom"
        assert failure["error"].startswith("task ") and failure["error"].endswith(" failed")
        frames = failure["exception"][0]
        assert frames["exc_type"] == "Boom"
        assert frames["frames"][-1]["name"] == "fail"
        assert "locals" not in frames["frames"][-1]


def test_every_event_carries_the_schema(logs: LogCapture) -> None:
    with TestClient(build_app([], {1}, 2)) as client:
        response = client.post("/work", headers={"X-Request-ID": "req-123"})

    assert response.headers["x-request-id"] == "req-123"
    task_events = [e for e in logs.events if e["event"].startswith("task.")]
    # Two lines per task at INFO: its acceptance and its end (task.started is DEBUG).
    assert [e["event"] for e in task_events] == ["task.queued", "task.queued", "task.succeeded", "task.failed"]
    for event in task_events:
        assert event["request_id"] == "req-123"
        assert event["service"] == "tasktest"
        assert event["backend"] == "inline"
        assert event["attempt"] == 1
        assert event["task"] in {f"{__name__}.succeed", f"{__name__}.fail"}
        assert datetime.fromisoformat(event["timestamp"]).tzinfo is not None
        assert event["level"] in {"info", "error"}
    for event in logs.named("task.succeeded") + logs.named("task.failed"):
        assert event["duration_ms"] >= 0
        # What task.started says, on the terminal line: when the run began and how long it waited.
        assert event["wait_ms"] >= 0
        started = datetime.fromisoformat(event["started_at"])
        assert started.tzinfo is not None and started <= datetime.fromisoformat(event["timestamp"])
    ids = {e["task_id"] for e in logs.named("task.queued")}
    assert len(ids) == 2
    assert {e["task_id"] for e in logs.named("task.succeeded") + logs.named("task.failed")} == ids
    completed = logs.named("request.completed")
    assert completed == [completed[0]]
    assert completed[0]["status"] == 200
    assert completed[0]["request_id"] == "req-123"
    assert completed[0]["route"] == "/work"


async def slow_async(seconds: float) -> None:
    await asyncio.sleep(seconds)


def noticed(logs: LogCapture, task_name: str) -> bool:
    return bool(logs.named("task.running", task=f"{__name__}.{task_name}"))


async def async_until_noticed(logs: LogCapture) -> None:
    """Runs until its own task.running is written (30 s at most): long enough on any machine."""
    for _ in range(600):
        if noticed(logs, "async_until_noticed"):
            return
        await asyncio.sleep(0.05)


def blocking_until_noticed(logs: LogCapture) -> None:
    for _ in range(600):
        if noticed(logs, "blocking_until_noticed"):
            return
        threading.Event().wait(0.05)


def test_a_task_still_running_after_the_notice_interval_says_so_once(
    logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At INFO a task writes task.queued and its end; one running long is not invisible in between."""
    monkeypatch.setenv("TASK_RUNNING_NOTICE_SECONDS", "0.2")
    get_settings.cache_clear()
    app = create_app("tasktest")

    @app.post("/slow")
    async def slow(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(async_until_noticed, logs)
        background_tasks.add_task(blocking_until_noticed, logs)
        background_tasks.add_task(succeed, [], 1)
        return {"status": "ok"}

    @app.post("/brief")
    async def brief(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(slow_async, 0.5)
        background_tasks.add_task(blocking_sleepy, 0.5)
        return {"status": "ok"}

    with TestClient(app) as client:
        client.post("/slow", headers={"X-Request-ID": "req-slow"})

    running = logs.named("task.running")
    noticed_tasks = sorted(e["task"] for e in running)
    assert noticed_tasks == [f"{__name__}.async_until_noticed", f"{__name__}.blocking_until_noticed"]
    for line in running:
        assert line["request_id"] == "req-slow" and line["level"] == "info"
        assert line["running_s"] >= 0.2 and line["notice_after_s"] == 0.2
        [end] = logs.named("task.succeeded", task_id=line["task_id"])
        assert end["started_at"] == line["started_at"]
    for line in running:  # the notice comes before the task's end, never after it
        order = [e["event"] for e in logs.events if e.get("task_id") == line["task_id"]]
        assert order == ["task.queued", "task.running", "task.succeeded"]
    assert len(logs.named("task.succeeded")) == 3, "the quick task wrote no notice"

    monkeypatch.setenv("TASK_RUNNING_NOTICE_SECONDS", "0")  # 0: never
    get_settings.cache_clear()
    with TestClient(app) as client:
        client.post("/brief")
    assert len(logs.named("task.succeeded")) == 5
    assert len(logs.named("task.running")) == 2


def test_the_notices_outlive_a_line_that_cannot_be_written_and_a_wrong_setting_meanwhile(
    logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The notices' thread survives a failed line and reads no settings: it once died of either, silently."""
    monkeypatch.setenv("TASK_RUNNING_NOTICE_SECONDS", "0.1")
    get_settings.cache_clear()

    class Unwritable:
        def __repr__(self) -> str:
            raise RuntimeError("cannot be rendered")

    fields = {"task": "t", "backend": "inline", "attempt": 1}
    running.watch({**fields, "task_id": "unwritable", "detail": Unwritable()})
    running.watch({**fields, "task_id": "first"})
    eventually(lambda: logs.named("task.running", task_id="first"), timeout=30, what="the notice after a failed one")
    assert not logs.named("task.running", task_id="unwritable")

    monkeypatch.setenv("UPLOAD_PART_BYTES", "1")  # wrong while the thread waits: none of its concern
    get_settings.cache_clear()
    time.sleep(0.5)  # past the interval: a thread that reads the settings when it wakes has read them
    monkeypatch.delenv("UPLOAD_PART_BYTES")
    get_settings.cache_clear()
    running.watch({**fields, "task_id": "second"})
    eventually(lambda: logs.named("task.running", task_id="second"), timeout=30, what="the next notice")


def test_task_started_is_written_at_debug(logs: LogCapture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    get_settings.cache_clear()
    configure_logging("tests", stream=logs.stream, cache_loggers=False)
    with TestClient(build_app([], set(), 1)) as client:
        client.post("/work")
    [started] = logs.named("task.started")
    [succeeded] = logs.named("task.succeeded")
    assert started["level"] == "debug"
    assert (started["task_id"], started["started_at"]) == (succeeded["task_id"], succeeded["started_at"])
    configure_logging("tests", cache_loggers=False)


def test_timestamps_are_iso_utc_with_microseconds_and_follow_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = _IsoTimestamp()
    clock = iter(
        [1_700_000_000_500_000_000, 1_700_000_000_750_000_000, 1_700_000_001_250_000_000, 1_700_003_600_000_000_000]
    )
    monkeypatch.setattr("shared.logs.time.time_ns", lambda: next(clock))
    stamps = [stamp(None, "info", {})["timestamp"] for _ in range(4)]
    assert stamps == [
        "2023-11-14T22:13:20.500000Z",
        "2023-11-14T22:13:20.750000Z",
        "2023-11-14T22:13:21.250000Z",
        "2023-11-14T23:13:20.000000Z",
    ]


class Structlogged:
    def __structlog__(self) -> dict[str, str]:
        return {"as": "logged"}


@pytest.mark.parametrize("structlog_variables", ["structlog's own", "public fallback"])
def test_every_line_gets_the_bound_keys_level_and_error_summary(
    logs: LogCapture, monkeypatch: pytest.MonkeyPatch, structlog_variables: str
) -> None:
    if structlog_variables == "public fallback":  # a structlog release without its private variable dict
        monkeypatch.setattr("shared.log_context.STRUCTLOG_VARS", None)
        monkeypatch.setattr("shared.logs.STRUCTLOG_VARS", None)
    log = get_logger("tests.pipeline")
    bound = structlog.contextvars.bind_contextvars(request_id="req-7", service="svc")
    try:
        assert shared.logs.bound("request_id") == "req-7"
        assert shared.logs.bound("never_bound") is None
        log.info("pipeline.kwargs", request_id="explicit", n=1, path=Path("/srv/x"), custom=Structlogged())
        log.info("pipeline.%s", "interpolated")
        log.warning("pipeline.warning")
        try:
            raise Boom("it broke")
        except Boom:
            log.exception("pipeline.exception")
    finally:
        structlog.contextvars.reset_contextvars(**bound)
    assert shared.logs.bound("request_id") is None
    kwargs, interpolated, warning, exception = logs.events
    assert (kwargs["request_id"], kwargs["service"], kwargs["n"], kwargs["level"]) == ("explicit", "svc", 1, "info")
    assert (kwargs["path"], kwargs["custom"]) == ("PosixPath('/srv/x')", {"as": "logged"})  # as structlog renders them
    assert (interpolated["event"], interpolated["request_id"]) == ("pipeline.interpolated", "req-7")
    assert warning["level"] == "warning"
    assert (exception["level"], exception["error_type"], exception["error"]) == ("error", "Boom", "it broke")
    assert exception["exception"][0]["exc_type"] == "Boom"
    assert "exc_info" not in exception


def test_module_loggers_follow_the_configuration_until_they_cache_it() -> None:
    first, second, third = LogCapture(), LogCapture(), LogCapture()
    log = get_logger("tests.module_logger")  # before any configuration, as at import time
    configure_logging("tests", stream=first.stream, cache_loggers=False)
    log.info("one")
    configure_logging("tests", stream=second.stream, cache_loggers=True)
    log.info("two")
    configure_logging("tests", stream=third.stream, cache_loggers=False)
    log.info("three")

    assert [e["event"] for e in first.events] == ["one"]
    assert [e["event"] for e in second.events] == ["two", "three"]
    assert third.events == []


def test_new_ids_are_distinct_and_fit_the_resource_id_pattern() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(ID_PATTERN, value) for value in ids)


def test_an_unrouted_path_is_logged_with_emails_masked(logs: LogCapture) -> None:
    with TestClient(build_app([], set(), 1)) as client:
        assert client.get("/nowhere/jane.doe@example.com").status_code == 404

    [completed] = logs.named("request.completed")
    assert completed["path"] == "/nowhere/j***@example.com"
    assert "route" not in completed


@pytest.mark.parametrize("header", [None, "", "has spaces", "x" * 200, "bad\u00e9id", "-starts-with-dash"])
def test_missing_or_malformed_request_id_is_generated(logs: LogCapture, header: str | None) -> None:
    headers = {"X-Request-ID": header.encode()} if header is not None else {}
    with TestClient(build_app([], set(), 1)) as client:
        response = client.post("/work", headers=headers)

    generated = response.headers["x-request-id"]
    assert generated != header
    assert len(generated) == 32
    assert {e["request_id"] for e in logs.events if e["event"].startswith("task.")} == {generated}


def test_each_request_has_its_own_id(logs: LogCapture) -> None:
    with TestClient(build_app([], set(), 1)) as client:
        first = client.post("/work").headers["x-request-id"]
        second = client.post("/work").headers["x-request-id"]

    assert first != second
    assert [e["request_id"] for e in logs.named("task.succeeded")] == [first, second]


def test_task_arguments_are_not_logged_by_default(logs: LogCapture) -> None:
    app = create_app("tasktest")

    @app.post("/greet")
    async def endpoint(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(greet, EMAIL, greeting="hi " + EMAIL)

    with TestClient(app) as client:
        client.post("/greet")

    assert logs.named("task.succeeded")
    assert "jane" not in logs.stream.getvalue()


def test_task_arguments_opt_in_masks_emails(settings_env: pytest.MonkeyPatch) -> None:
    capture = capture_logs_with(settings_env, LOG_TASK_ARGS="true")
    app = create_app("tasktest")

    @app.post("/greet")
    async def endpoint(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(greet, EMAIL, greeting="hi " + EMAIL)

    with TestClient(app) as client:
        client.post("/greet")

    queued = capture.named("task.queued")[0]
    assert queued["task_args"] == ["j***@example.com"]
    assert queued["task_kwargs"] == {"greeting": "hi j***@example.com"}
    assert "jane.doe" not in capture.stream.getvalue()


def test_log_level_is_honoured(settings_env: pytest.MonkeyPatch) -> None:
    capture = capture_logs_with(settings_env, LOG_LEVEL="WARNING")
    with TestClient(build_app([], {0}, 2)) as client:
        client.post("/work")

    assert {e["event"] for e in capture.events} == {"task.failed"}


def test_console_format_is_readable(settings_env: pytest.MonkeyPatch) -> None:
    capture = capture_logs_with(settings_env, LOG_FORMAT="console")
    with TestClient(build_app([], set(), 1)) as client:
        client.post("/work")

    text = capture.stream.getvalue()
    assert "task.succeeded" in text
    assert not text.lstrip().startswith("{")


def test_uvicorn_logs_go_through_the_same_pipeline(logs: LogCapture) -> None:
    logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=Boom("kaput"))
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/health", "1.1", 200)

    error, access = logs.events[-2:]
    assert error["logger"] == "uvicorn.error"
    assert error["level"] == "error"
    assert error["exception"][0]["exc_type"] == "Boom"
    assert (error["error_type"], error["error"]) == ("Boom", "kaput")
    assert access["logger"] == "uvicorn.access"
    assert access["event"] == '127.0.0.1:1 - "GET /health HTTP/1.1" 200'
    assert "timestamp" in access


def test_task_timeout_is_logged_and_the_next_task_runs(logs: LogCapture) -> None:
    app = create_app("tasktest")
    results: list[str] = []

    @app.post("/slow")
    async def endpoint(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(sleepy, results)
        background_tasks.add_task(results.append, "next ran")
        return {"status": "ok"}

    with TestClient(app) as client:
        response = client.post("/slow")

    assert response.json() == {"status": "ok"}
    assert results == ["next ran"]
    timed_out = logs.named("task.timed_out")
    assert [e["task"] for e in timed_out] == ["tests.sleepy"]
    assert timed_out[0]["timeout_s"] == 0.05


def test_default_timeout_applies_to_sync_tasks(settings_env: pytest.MonkeyPatch, logs: LogCapture) -> None:
    settings_env.setenv("TASK_TIMEOUT_SECONDS", "0.05")
    get_settings.cache_clear()
    app = create_app("tasktest")

    @app.post("/slow")
    async def endpoint(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(blocking_sleepy, 1.0)

    with TestClient(app) as client:
        client.post("/slow")

    # A thread cannot be stopped: past the default timeout it is reported overrunning, then its real end.
    [overrunning] = logs.named("task.overrunning")
    assert (overrunning["task"], overrunning["timeout_s"]) == (f"{__name__}.blocking_sleepy", 0.05)
    [late] = logs.named("task.succeeded", task=f"{__name__}.blocking_sleepy")
    assert late["overran"] is True and late["timeout_s"] == 0.05
    assert not logs.named("task.timed_out")


def test_sync_tasks_run_off_the_event_loop_thread() -> None:
    app = create_app("tasktest")
    threads: list[int] = []
    loop_threads: list[int] = []

    @app.post("/where")
    async def endpoint(background_tasks: BackgroundTasks) -> None:
        loop_threads.append(threading.get_ident())
        background_tasks.add_task(record_thread, threads)

    with TestClient(app) as client:
        client.post("/where")

    assert len(threads) == 1
    assert threads != loop_threads


def test_unhandled_error_is_json_500_with_request_id(logs: LogCapture) -> None:
    app = create_app("tasktest")

    @app.get("/broken")
    async def broken() -> None:
        raise Boom("kaput")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/broken", headers={"X-Request-ID": "req-500"})

    assert response.status_code == 500
    assert response.json() == {"detail": "Internal Server Error", "request_id": "req-500"}
    assert response.headers["x-request-id"] == "req-500"
    [failed] = logs.named("request.failed")
    assert failed["error_type"] == "Boom"
    assert failed["request_id"] == "req-500"


class RejectingBackend(InlineBackend):
    name = "rejecting"

    def accept(self, task: QueuedTask) -> None:
        raise TaskRejected(f"{task.name} cannot be queued")


def test_a_rejected_task_fails_the_request_and_queues_nothing(logs: LogCapture, notification_log: Path) -> None:
    app = create_app("tasktest")
    app.state.task_executor.route(["tests.rejected"], RejectingBackend())

    @task("tests.rejected")
    def rejected() -> None:
        pass

    @app.post("/reject")
    async def endpoint(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(succeed, [], 1)
        background_tasks.add_task(rejected)
        return {"status": "ok"}

    with TestClient(app) as client:
        response = client.post("/reject")

    assert response.status_code == 500
    assert response.json() == {"detail": "background task rejected: tests.rejected cannot be queued"}
    assert logs.named("task.queued") == []
    assert logs.named("task.started") == []


def test_install_refuses_routes_declared_before_it() -> None:
    app = FastAPI()

    @app.get("/early")
    async def early() -> None:
        pass

    with pytest.raises(RuntimeError, match="/early"):
        install(app)


def test_every_route_of_every_function_runs_through_the_task_layer() -> None:
    import importlib

    functions = sorted(p.parent.name for p in Path("functions").glob("*/app.py"))
    assert "notifications" in functions
    for name in functions:
        app = importlib.import_module(f"functions.{name}.app").app
        api_routes = [r for r in app.routes if hasattr(r, "endpoint") and hasattr(r, "response_model")]
        assert api_routes, name
        assert all(isinstance(route, TaskRoute) for route in api_routes), name
        assert hasattr(app.state, "task_executor"), name


async def _mine(request: Request, exc: Exception) -> PlainTextResponse:
    return PlainTextResponse(f"mine: {type(exc).__name__}", status_code=599)


@pytest.mark.parametrize("key", [Exception, 500])
def test_the_users_own_catch_all_exception_handler_wins(key: type[Exception] | int, logs: LogCapture) -> None:
    """FastAPI's test_override_server_error_exception_response, through create_app."""
    app = create_app("tasktest", exception_handlers={key: _mine})

    @app.get("/broken")
    async def broken() -> None:
        raise Boom("kaput")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/broken")

    assert (response.status_code, response.text) == (599, "mine: Boom")
    assert logs.named("request.failed")[0]["error_type"] == "Boom"


def test_the_users_own_aws_error_handler_wins() -> None:
    from botocore.exceptions import ClientError

    app = create_app("tasktest", calls_aws=True, exception_handlers={ClientError: _mine})

    @app.get("/aws")
    async def aws_call() -> None:
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "GetItem")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/aws")

    assert (response.status_code, response.text) == (599, "mine: ClientError")


_AWS_ERRORS_AFTER_START = """
import json, sys
from fastapi.testclient import TestClient
from shared import aws
from shared.app import create_app

def throttling_app(name):
    app = create_app(name, calls_aws=True)

    @app.get("/aws")
    def call_aws():
        aws.client("sqs")  # the first client loads botocore
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "SendMessage")

    return app

started, fresh = throttling_app("started"), throttling_app("fresh")
found = {"botocore_after_create_app": "botocore" in sys.modules}
with TestClient(started, raise_server_exceptions=False) as client:
    found["health"] = client.get("/health").status_code  # the middleware stack is built without botocore
    answer = client.get("/aws")
    found["started"] = [answer.status_code, answer.headers.get("retry-after")]
with TestClient(fresh, raise_server_exceptions=False) as client:  # botocore came before its first request
    answer = client.get("/aws")
    found["fresh"] = [answer.status_code, answer.headers.get("retry-after")]
print(json.dumps(found))
"""


def test_aws_outages_answer_503_though_botocore_loads_only_with_the_first_client() -> None:
    """calls_aws=True imports no botocore at cold start; the 503 handlers arrive with the first client,
    in an app already serving (its middleware stack built) and in one not started yet."""
    completed = subprocess.run(
        [sys.executable, "-c", _AWS_ERRORS_AFTER_START],
        cwd=Path(__file__).parents[1],
        env={**os.environ, "LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    found = json.loads(completed.stdout.strip().splitlines()[-1])

    assert found == {
        "botocore_after_create_app": False,
        "health": 200,
        "started": [503, "1"],
        "fresh": [503, "1"],
    }
    assert '"event":"request.aws_unavailable"' in completed.stdout


def test_a_pydantic_v1_model_is_still_refused_as_fastapi_refuses_it() -> None:
    """shared.pydantic_v1_check skips FastAPI's import of pydantic.v1, not its check."""
    import warnings

    from fastapi.exceptions import PydanticV1NotSupportedError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pydantic import v1

    class Legacy(v1.BaseModel):
        name: str

    app = create_app("tasktest")
    with pytest.raises(PydanticV1NotSupportedError, match=r"pydantic\.v1 models are no longer supported"):

        @app.get("/legacy", response_model=Legacy)
        def legacy() -> None: ...


def late_failure(gate: threading.Event, results: list[str]) -> None:
    gate.wait(5)
    results.append("late side effect")
    raise ValueError("failed after its timeout")


def test_a_sync_task_failing_after_its_timeout_is_reported_failed_with_overran(logs: LogCapture) -> None:
    """It overran, the next task ran meanwhile (and let it go on), then its real failure is logged."""
    results: list[str] = []
    gate = threading.Event()

    def release(results: list[str]) -> None:
        results.append("next ran")
        gate.set()

    tasks = [
        QueuedTask(late_failure, (gate, results), {}, "tests.late_failure", timeout=0.05),
        QueuedTask(release, (results,), {}, "tests.release"),
    ]

    asyncio.run(InlineBackend().dispatch(tasks))

    assert results == ["next ran", "late side effect"]
    assert [e["event"] for e in logs.events if e.get("task") == "tests.late_failure"] == [
        "task.overrunning",
        "task.failed",
    ]
    [failed] = logs.named("task.failed")
    assert failed["overran"] is True and failed["error"] == "failed after its timeout"
    assert not logs.named("task.timed_out")
