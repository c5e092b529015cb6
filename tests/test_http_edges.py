"""Bad input is a 4xx with a JSON body on every function, whatever the request holds.

JSON edge values (``NaN``, ``Infinity``, ``1e400``, lone surrogates) that Python's ``json``
accepts but nothing can render back; error answers that would echo unrenderable input;
bodies beyond a cap; and the ``FastAPI(...)``/Mangum habits ``create_app`` and
``make_handler`` must keep (``routes=``, app-wide ``dependencies=``, test contexts).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

import pytest
from fastapi import BackgroundTasks, Depends, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict

from infra.lambda_events import http_api_event
from shared.app import create_app
from shared.background.routing import TaskRoute
from shared.lambda_handler import make_handler
from tests.support.logs import LogCapture

EDGE_VALUES = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", '"a\\ud800b"', '"\\udfff"', '"\\ud83d"']
"""JSON text Python parses into values no JSON or UTF-8 encoder renders back."""

BODIES = {
    "items": ("/items", ['{"name": %s}', '{"name": "mug", "tags": [%s]}', '{"name": "mug", "x": {"k": %s}}']),
    "users": ("/users", ['{"name": %s, "email": "a@b.test"}', '{"name": "Jane", "email": %s}']),
    "notifications": ("/process", ['{"data": {"a": %s}}', '{"data": {}, "run_async": %s}', '{"data": %s}']),
}


def strict_json(response: Any) -> Any:
    """The answer's body as RFC 8259 JSON in UTF-8, or an assertion error."""

    def refuse(name: str) -> None:
        raise AssertionError(f"the answer holds {name}")

    assert response.headers["content-type"] == "application/json", response.text
    return json.loads(response.content.decode("utf-8"), parse_constant=refuse)


def client_of(name: str) -> Iterator[TestClient]:
    import importlib

    app = importlib.import_module(f"functions.{name}.app").app
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.usefixtures("state")
@pytest.mark.parametrize("value", EDGE_VALUES)
@pytest.mark.parametrize("name", sorted(BODIES))
def test_json_edge_values_are_a_422_saying_why_on_every_function(name: str, value: str, logs: LogCapture) -> None:
    path, templates = BODIES[name]
    for client in client_of(name):
        for template in templates:
            body = template.replace("%s", value)
            response = client.post(path, content=body, headers={"content-type": "application/json"})

            assert response.status_code == 422, (body, response.text)
            [error] = strict_json(response)["detail"]
            assert error["type"] == "json_invalid"
            assert error["loc"] == ["body", body.index(value)]
            assert ("surrogate" if value.startswith('"') else value.lstrip("-")) in error["ctx"]["error"]
    assert logs.named("request.failed") == []


class Note(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str
    score: float = 0.0


def echo_app() -> TestClient:
    """What ``make function`` generates, reduced: a model with plain fields, echoed back."""
    app = create_app("echo")

    @app.post("/notes", status_code=201)
    def create(body: Note) -> Note:
        return body

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, Any]:
        return {"keys": sorted(await request.json())}

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("value", EDGE_VALUES)
def test_a_function_that_echoes_its_input_refuses_edge_values_with_a_422(value: str, logs: LogCapture) -> None:
    client = echo_app()
    for template in ['{"note": %s}', '{"note": "x", "score": %s}', "{%s: 1}"]:
        body = template.replace("%s", value)
        response = client.post("/notes", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, (body, response.text)
        strict_json(response)
    assert logs.named("request.failed") == []


def test_a_route_that_reads_the_body_itself_gets_the_same_422() -> None:
    response = echo_app().post("/raw", content='{"a": NaN}', headers={"content-type": "application/merge-patch+json"})
    assert response.status_code == 422
    [error] = strict_json(response)["detail"]
    assert error["type"] == "json_invalid" and error["loc"] == ["body", 6]
    assert error["ctx"]["error"] == "NaN is not a JSON number (RFC 8259)"


@pytest.mark.parametrize(
    ("served", "refused"),
    [
        # An escaped backslash before "ud800" is no surrogate; a number near the range's end is one.
        ('{"note": "\\\\ud800 is how JSON writes one", "score": 1e300}', '{"note": "\\ud800", "score": 1e300}'),
        ('{"note": "\\ud83d\\ude00 a pair is a character"}', '{"note": "\\ude00\\ud83d reversed is not"}'),
        ('{"note": "NaN Infinity", "score": -1.5e-300}', '{"note": "NaN Infinity", "score": -1.5e400}'),
    ],
)
def test_only_real_edge_values_are_refused(served: str, refused: str) -> None:
    client = echo_app()
    response = client.post("/notes", content=served, headers={"content-type": "application/json"})
    assert response.status_code == 201, response.text
    assert response.json() == {"score": 0.0, **json.loads(served)}
    assert client.post("/notes", content=refused, headers={"content-type": "application/json"}).status_code == 422


@pytest.mark.parametrize("body", [b"\xff\xfe", b'"\xed\xa0\x80"'])
@pytest.mark.parametrize("content_type", [None, "text/plain"])
def test_a_body_that_is_not_json_text_is_refused_without_echoing_it(
    body: bytes, content_type: str | None, notifications_client: TestClient, logs: LogCapture
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = notifications_client.post("/process", content=body, headers=headers)

    assert response.status_code == 422, response.text
    assert all("input" not in error for error in strict_json(response)["detail"])
    assert logs.named("request.failed") == []


def test_a_validation_error_never_echoes_input_it_cannot_render() -> None:
    app = create_app("validation")

    def check() -> None:
        raise RequestValidationError(
            [
                {"type": "nan", "loc": ("query", "q\ud800"), "msg": "bad \udfff", "input": float("nan")},
                {"type": "inf", "loc": ("body",), "msg": "too big", "input": 1, "ctx": {"limit": float("inf")}},
                {"type": "bytes", "loc": ("body",), "msg": "not text", "input": b"\xff"},
            ]
        )

    @app.get("/check", dependencies=[Depends(check)])
    async def checked() -> None:
        pass

    response = TestClient(app, raise_server_exceptions=False).get("/check")

    assert response.status_code == 422
    assert strict_json(response)["detail"] == [
        {"type": "nan", "loc": ["query", "q\\ud800"], "msg": "bad \\udfff"},
        {"type": "inf", "loc": ["body"], "msg": "too big", "input": 1, "ctx": {"limit": "inf"}},
        {"type": "bytes", "loc": ["body"], "msg": "not text"},
    ]


def test_an_http_exception_whose_detail_cannot_be_rendered_is_escaped() -> None:
    app = create_app("detail")

    @app.get("/things/{name}")
    async def thing(name: str) -> None:
        raise HTTPException(404, f"{name}\ud800 not found", headers={"X-Why": "missing"})

    response = TestClient(app, raise_server_exceptions=False).get("/things/mug")

    assert response.status_code == 404
    assert strict_json(response) == {"detail": "mug\\ud800 not found"}
    assert response.headers["x-why"] == "missing"


# --- body caps ---------------------------------------------------------------------------


def test_notifications_caps_its_bodies(notifications_client: TestClient, logs: LogCapture) -> None:
    body = b'{"data": {"a": "' + b"x" * (30 * 1024 * 1024) + b'"}}'
    response = notifications_client.post("/process", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 413
    assert "larger than the limit" in strict_json(response)["detail"]


def test_create_app_caps_bodies_by_default_and_none_lifts_the_cap() -> None:
    body = b"x" * (1024 * 1024 + 1)
    for cap, expected in ((None, 200), ("default", 413)):
        app = create_app("capped") if cap == "default" else create_app("uncapped", max_body_bytes=None)

        @app.post("/size")
        async def size(request: Request) -> int:
            return len(await request.body())

        response = TestClient(app).post("/size", content=body)
        assert response.status_code == expected, cap


# --- FastAPI's and Mangum's habits ----------------------------------------------------------


def record(label: str) -> None:
    print(label)


async def home(background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(record, "home")
    return {"page": "home"}


def test_create_app_takes_over_routes_given_as_fastapi_does(logs: LogCapture) -> None:
    app = create_app("svc", routes=[APIRoute("/", home)], title="Service")

    with TestClient(app) as client:
        response = client.get("/")

    assert response.json() == {"page": "home"}
    assert isinstance(app.router.routes[0], TaskRoute)
    assert app.title == "Service"
    [succeeded] = logs.named("task.succeeded", request_id=response.headers["x-request-id"])
    assert succeeded["task"] == "tests.test_http_edges.record"


def verify_token(x_token: Annotated[str, Header()]) -> None:
    if x_token != "secret":
        raise HTTPException(401, "Bad token.")


def test_health_answers_whatever_app_wide_dependencies_guard_the_rest() -> None:
    app = create_app("guarded", dependencies=[Depends(verify_token)])

    @app.get("/private")
    async def private() -> str:
        return "yes"

    client = TestClient(app)
    assert client.get("/health").json() == {"status": "ok", "service": "guarded"}
    assert client.get("/private").status_code == 422
    assert client.get("/private", headers={"x-token": "nope"}).status_code == 401
    assert client.get("/private", headers={"x-token": "secret"}).json() == "yes"


class MangumTestContext:
    """Mangum's test suite's context: no time left to ask for off Lambda."""

    aws_request_id = "mangum-test"
    function_name = "test"

    def get_remaining_time_in_millis(self) -> int:
        raise NotImplementedError


def test_make_handler_asks_the_context_only_for_what_it_uses() -> None:
    handler = make_handler(create_app("plain"))
    result = handler(http_api_event("/health", method="GET"), MangumTestContext())
    assert result["statusCode"] == 200
    assert json.loads(result["body"]) == {"status": "ok", "service": "plain"}
