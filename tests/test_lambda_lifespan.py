"""An app's lifespan on Lambda: startup once per execution environment, at init.

Under uvicorn and ``TestClient`` FastAPI runs the lifespan around the server's life; on
Lambda the handler runs it when the function is imported, before the first invocation,
and never again: a client opened or a model loaded there serves every invocation.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from infra.lambda_events import http_api_event
from infra.runtime_api import InitFailed, lambda_environment
from tests.support.logs import LogCapture


def startups(log_file: Path) -> list[str]:
    lines = log_file.read_text().splitlines() if log_file.exists() else []
    return [line for line in lines if line.startswith("lifespan startup")]


def test_startup_runs_once_at_init_and_its_state_serves_every_invocation(tmp_path: Path) -> None:
    log_file = tmp_path / "notifications.log"
    handler = "tests.support.router_app.handler"
    with lambda_environment(handler, env={"NOTIFICATION_LOG_PATH": str(log_file)}) as env:
        # Init is complete and no invocation was handed out yet: startup has run, in the init phase.
        assert not env.api.invocations
        [startup] = startups(log_file)
        pid = startup.split()[-1]

        labels = [f"state-{uuid.uuid4().hex[:8]}" for _ in range(3)]
        invocations = [env.invoke(http_api_event(f"/state/{label}", method="GET")).wait_free() for label in labels]
        complete = env.logs()

    assert pid == str(env.process.pid)
    for invocation in invocations:
        assert invocation.result["statusCode"] == 200
        assert json.loads(invocation.result["body"]) == {"client": f"client-{pid}", "opened_by": "lifespan"}
    lines = log_file.read_text().splitlines()
    assert [f"state {label} client-{pid}" for label in labels] == [line for line in lines if line.startswith("state")]
    assert startups(log_file) == [startup], "startup ran once for three invocations"
    [started] = [line for line in complete if line.get("event") == "lifespan.started"]
    assert "function_request_id" not in started, "logged during init, outside any invocation"


def test_a_failing_startup_fails_the_init_loudly(tmp_path: Path) -> None:
    env = {"NOTIFICATION_LOG_PATH": str(tmp_path / "n.log"), "ROUTER_APP_FAIL_STARTUP": "1"}
    with pytest.raises(InitFailed) as failed, lambda_environment("tests.support.router_app.handler", env=env):
        pass
    assert "the lifespan could not open its client" in str(failed.value)


def test_outside_lambda_the_handler_starts_the_lifespan_at_its_first_call(notification_log: Path) -> None:
    from tests.support.router_app import handler

    context = SimpleNamespace(
        function_name="fn",
        memory_limit_in_mb="512",
        invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:fn",
        aws_request_id="local",
        get_remaining_time_in_millis=lambda: 30_000,
    )
    try:
        answers = [handler(http_api_event(f"/state/local{index}", method="GET"), context) for index in range(3)]
    finally:
        handler.lifespan.shutdown()

    assert [json.loads(answer["body"])["opened_by"] for answer in answers] == ["lifespan"] * 3
    assert startups(notification_log) == [f"lifespan startup {os.getpid()}"]
    assert notification_log.read_text().splitlines()[-1] == f"lifespan shutdown {os.getpid()}"


def test_init_code_that_ran_asyncio_run_leaves_the_function_serving_on_the_lifespans_loop() -> None:
    # asyncio.run at import leaves the main thread without a current event loop.
    with lambda_environment("tests.support.asyncio_init_app.handler") as env:
        invocations = [env.invoke(http_api_event("/loop", method="GET")).wait_free() for _ in range(2)]

    for invocation in invocations:
        assert invocation.result["statusCode"] == 200, invocation.result
        assert json.loads(invocation.result["body"]) == {"on_startup_loop": True, "warmed": "warm"}


def test_asyncio_run_between_two_calls_leaves_the_next_call_on_the_lifespans_loop() -> None:
    from tests.support.asyncio_init_app import handler

    context = SimpleNamespace(aws_request_id="local", get_remaining_time_in_millis=lambda: 30_000)
    event = http_api_event("/loop", method="GET")
    try:
        first = handler(event, context)
        asyncio.run(asyncio.sleep(0))  # a test suite's other test, say
        second = handler(event, context)
    finally:
        handler.lifespan.shutdown()

    for answer in (first, second):
        assert answer["statusCode"] == 200, answer
        assert json.loads(answer["body"])["on_startup_loop"] is True


def test_a_closed_lifespan_loop_is_replaced_loudly(logs: LogCapture) -> None:
    handler = ping_handler()
    try:
        assert handler(PING, CONTEXT)["statusCode"] == 200
        closed = handler.lifespan.loop
        closed.close()

        answer = handler(PING, CONTEXT)
        left = coroutine_states(closed)
    finally:
        handler.lifespan.shutdown()

    assert answer["statusCode"] == 200
    [replaced] = logs.named("lifespan.loop_replaced")
    assert replaced["level"] == "warning"
    # Closed at once: left pending, the garbage collector finalized it in whichever later test
    # ran a collection, where its cleanup raised "Event loop is closed".
    assert left == [inspect.CORO_CLOSED]


def test_a_shutdown_after_its_loop_was_closed_is_skipped_loudly(logs: LogCapture) -> None:
    handler = ping_handler()
    assert handler(PING, CONTEXT)["statusCode"] == 200
    closed = handler.lifespan.loop
    closed.close()

    handler.lifespan.shutdown()

    [skipped] = logs.named("lifespan.shutdown_skipped")
    assert skipped["level"] == "warning"
    assert coroutine_states(closed) == [inspect.CORO_CLOSED]


PING = http_api_event("/ping", method="GET")
CONTEXT = SimpleNamespace(aws_request_id="local", get_remaining_time_in_millis=lambda: 30_000)


def ping_handler() -> Any:
    from shared.app import create_app
    from shared.lambda_handler import make_handler

    app = create_app("closed-loop")

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return make_handler(app)


def coroutine_states(loop: asyncio.AbstractEventLoop) -> list[str]:
    """The state of the coroutine of every task the loop still holds (the lifespan's, here)."""
    return [inspect.getcoroutinestate(task.get_coro()) for task in asyncio.all_tasks(loop)]  # type: ignore[arg-type]
