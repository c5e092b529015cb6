"""Every route of an app runs its tasks through the task layer, however it was declared.

FastAPI apps put their routes in ``APIRouter``s, nest them, give them their own route
classes, add routes after including a router. None of that may bypass the layer: a
failing task never skips the next, every task is logged, the response is not held up.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, BackgroundTasks, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from infra.lambda_events import http_api_event
from infra.runtime_api import InitFailed, LambdaEnvironment, lambda_environment
from infra.servers import ServerProcess, free_port, parse_json_lines, start_function
from shared.app import create_app
from shared.background.install import TaskRoute, UnmanagedRouteError, install
from tests.support.logs import LogCapture

ROUTES = ["/v1/outer/fail/{label}", "/v1/outer/inner/fail/{label}", "/v1/outer/inner/late/{label}"]
"""A router's route, a nested router's (with its own route class), one declared after the include."""


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def router_client(logs: LogCapture) -> Iterator[TestClient]:
    from tests.support.router_app import app

    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize("route", ROUTES)
def test_a_router_route_runs_every_task_and_logs_it(
    route: str, router_client: TestClient, logs: LogCapture, notification_log: Path
) -> None:
    label = unique("router")
    response = router_client.post(route.format(label=label))

    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    [failed] = logs.named("task.failed", request_id=request_id)
    assert failed["task"] == "tests.support.router_app.fail"
    assert failed["error_type"] == "ValueError"
    [succeeded] = logs.named("task.succeeded", request_id=request_id)
    assert succeeded["task"] == "tests.support.router_app.record"
    assert f"record {label}" in notification_log.read_text()
    assert logs.named("request.failed") == []
    [completed] = logs.named("request.completed", request_id=request_id)
    assert completed["route"] == route


def test_a_routers_own_route_class_keeps_working(router_client: TestClient) -> None:
    response = router_client.post(f"/v1/outer/inner/fail/{unique('timed')}")
    assert response.headers["x-timed"] == "yes"


def test_routes_declared_any_way_are_task_routes_once_the_app_started() -> None:
    app = create_app("routing")
    outer, inner = APIRouter(), APIRouter(route_class=TimedRouteForTest)

    @inner.get("/inner")
    async def inner_route() -> None:
        pass

    outer.include_router(inner, prefix="/deep")
    app.include_router(outer, prefix="/outer")

    @outer.get("/late")
    async def late_route() -> None:
        pass

    with TestClient(app):

        @inner.get("/after-start")
        async def declared_while_serving() -> None:
            pass

    assert isinstance(inner.routes[0], TaskRoute) and isinstance(inner.routes[0], TimedRouteForTest)
    assert isinstance(outer.routes[-1], TaskRoute)
    assert isinstance(inner.routes[-1], TaskRoute) and isinstance(inner.routes[-1], TimedRouteForTest)


class TimedRouteForTest(APIRoute):
    pass


def test_a_mounted_app_without_the_task_layer_refuses_to_start() -> None:
    app = create_app("routing")
    plain = FastAPI()

    @plain.post("/work")
    async def work(background_tasks: BackgroundTasks) -> None:
        pass

    app.mount("/plain", plain)
    with pytest.raises(UnmanagedRouteError, match="mounted at /plain") as refused, TestClient(app):
        pass
    assert "\n" not in str(refused.value)


def test_install_still_refuses_routes_of_routers_included_before_it() -> None:
    app, router = FastAPI(), APIRouter()

    @router.get("/early")
    async def early() -> None:
        pass

    app.include_router(router, prefix="/r")
    with pytest.raises(RuntimeError, match="/early"):
        install(app)


def test_under_uvicorn_a_router_route_runs_both_tasks(tmp_path: Path) -> None:
    log_file = tmp_path / "notifications.log"
    server = start_function(
        "router",
        {"NOTIFICATION_LOG_PATH": str(log_file), "LOG_FORMAT": "json"},
        "--app",
        "tests.support.router_app:app",
    )
    label = unique("uvicorn")
    try:
        response = httpx.post(f"{server.base_url}/v1/outer/inner/fail/{label}", timeout=10)
        request_id = response.headers["x-request-id"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
            e["event"] == "task.succeeded" and e.get("request_id") == request_id
            for e in parse_json_lines(server.output())
        ):
            time.sleep(0.02)
    finally:
        server.stop()
        events = parse_json_lines(server.output())
        server.close()
    assert response.status_code == 200
    of_request = [e["event"] for e in events if e.get("request_id") == request_id and e["event"].startswith("task.")]
    assert sorted(of_request) == sorted(["task.queued"] * 2 + ["task.failed", "task.succeeded"])
    assert f"record {label}" in log_file.read_text()


@pytest.fixture(scope="module")
def router_lambda(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LambdaEnvironment, Path]]:
    log_file = tmp_path_factory.mktemp("router-lambda") / "notifications.log"
    with lambda_environment("tests.support.router_app.handler", env={"NOTIFICATION_LOG_PATH": str(log_file)}) as env:
        yield env, log_file


@pytest.mark.parametrize("route", ROUTES)
def test_on_lambda_a_router_route_runs_its_tasks_after_the_response(
    route: str, router_lambda: tuple[LambdaEnvironment, Path]
) -> None:
    env, log_file = router_lambda
    label = unique("lambda")
    invocation = env.invoke(http_api_event(route.format(label=label)))
    invocation.wait_free()

    assert invocation.result["statusCode"] == 200
    [failed] = env.logs("task.failed", function_request_id=invocation.request_id)
    [succeeded] = env.logs("task.succeeded", function_request_id=invocation.request_id)
    assert failed["backend"] == succeeded["backend"] == "lambda-extension"
    assert f"record {label}" in log_file.read_text()
    assert not env.logs("request.failed", function_request_id=invocation.request_id)


def test_an_exception_handlers_background_tasks_run_through_the_layer(logs: LogCapture, notification_log: Path) -> None:
    from tests.support.router_app import fail, record

    app = create_app("routing")

    class Refused(Exception):
        pass

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        tasks = BackgroundTasks()
        tasks.add_task(fail, "handler")
        tasks.add_task(record, "handler")
        return JSONResponse({"detail": "refused"}, status_code=409, background=tasks)

    @app.post("/refuse")
    async def refuse() -> None:
        raise Refused

    with TestClient(app) as client:
        response = client.post("/refuse")

    assert response.status_code == 409
    request_id = response.headers["x-request-id"]
    assert logs.named("task.failed", request_id=request_id, task="tests.support.router_app.fail")
    assert logs.named("task.succeeded", request_id=request_id, task="tests.support.router_app.record")
    assert "record handler" in notification_log.read_text()


def test_under_uvicorn_an_app_with_a_route_it_cannot_manage_refuses_to_start(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "shared.serve", "--app", "tests.support.unmanaged_app:app", "--port", str(port)]
    server = ServerProcess(command, {"LOG_FORMAT": "json", "NOTIFICATION_LOG_PATH": str(tmp_path / "n.log")}, port)
    try:
        exit_code = server.process.wait(30)
        output = server.output()
    finally:
        server.close()
    assert exit_code != 0
    assert "the app mounted at /plain runs its background tasks without the task layer" in output


def test_on_lambda_an_app_with_a_route_it_cannot_manage_fails_its_init(tmp_path: Path) -> None:
    env = {"NOTIFICATION_LOG_PATH": str(tmp_path / "n.log")}
    with (
        pytest.raises(InitFailed, match="the app mounted at /plain"),
        lambda_environment("tests.support.unmanaged_app.handler", env=env),
    ):
        pass
