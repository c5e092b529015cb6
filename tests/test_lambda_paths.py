"""Every event shape reaches every function's own paths, and URLs the app builds point back.

The functions' routes start with their own name (``POST /items``, ``GET /items/search``),
and so does the prefix the HTTP API routes them under (``/items/{proxy+}``): only the event
can tell ``/items/items`` (prefix + route) from a Function URL's ``/items`` (the route).
"""

from __future__ import annotations

import importlib
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest

from infra.lambda_events import SHAPES, shaped_event
from infra.local_resources import create_table
from infra.runtime_api import lambda_environment
from infra.template import template
from shared.settings import get_settings
from tests.support.aws_resources import AwsState
from tests.support.sqs_queues import durable_aws_server, subprocess_env

HTTP_FUNCTIONS = ["notifications", "users", "uploads", "items"]
EMAIL = "foo@example.com"
MISSING = "0" * 32

OWN_ROUTE: dict[str, tuple[str, str, int, Any]] = {
    # A route of each function, and what it answers: the endpoint's own answer, not a routing 404.
    "notifications": ("POST", f"/send-notification/{EMAIL}", 200, {"message": "Notification sent in the background"}),
    "users": ("GET", f"/users/{MISSING}", 404, {"detail": f"User {MISSING} not found."}),
    "uploads": ("GET", f"/uploads/{MISSING}", 404, {"detail": f"Upload {MISSING} not found."}),
    "items": ("GET", "/items/search?q=mug", 200, {"query": "mug", "results": []}),
}


@pytest.fixture(scope="module", autouse=True)
def lifespans_shut_down() -> Iterator[None]:
    """The handlers start their apps' lifespans at their first call here; end them with the module."""
    yield
    for name in HTTP_FUNCTIONS:
        importlib.import_module(f"functions.{name}.app").handler.lifespan.shutdown()


def context() -> SimpleNamespace:
    return SimpleNamespace(
        function_name="fn",
        memory_limit_in_mb="512",
        invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:fn",
        aws_request_id=str(uuid.uuid4()),
        get_remaining_time_in_millis=lambda: 30_000,
    )


class Function:
    """A function's Lambda handler, called in-process with events of one shape."""

    def __init__(self, name: str, shape: str) -> None:
        self.name, self.shape = name, shape
        self.handler = importlib.import_module(f"functions.{name}.app").handler

    def call(self, method: str, app_path: str, **options: Any) -> tuple[dict[str, Any], str]:
        path, _, query = app_path.partition("?")
        params = dict(part.split("=", 1) for part in query.split("&")) if query else None
        event, root = shaped_event(self.shape, self.name, path, method=method, query=params, **options)
        return self.handler(event, context()), root


def serve(name: str, shape: str, monkeypatch: pytest.MonkeyPatch) -> Function:
    """The function as template.yaml deploys it: API_ROOT_PATH=/<name>."""
    monkeypatch.setenv("API_ROOT_PATH", f"/{name}")
    monkeypatch.setenv("MAIL_BACKEND", "log")
    get_settings.cache_clear()
    return Function(name, shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", HTTP_FUNCTIONS)
def test_every_function_serves_its_own_routes_docs_and_openapi_in_every_shape(
    name: str, shape: str, state: AwsState, monkeypatch: pytest.MonkeyPatch
) -> None:
    function = serve(name, shape, monkeypatch)
    method, path, status, body = OWN_ROUTE[name]

    response, root = function.call(method, path)
    assert (response["statusCode"], json.loads(response["body"])) == (status, body)

    openapi, _ = function.call("GET", "/openapi.json")
    assert openapi["statusCode"] == 200
    servers = json.loads(openapi["body"]).get("servers", [])
    assert servers == ([{"url": root}] if root else []), "Try it out must call the URL the client used"

    docs, _ = function.call("GET", "/docs")
    assert docs["statusCode"] == 200
    assert f"url: '{root}/openapi.json'" in docs["body"]


@pytest.mark.parametrize("shape", SHAPES)
def test_items_location_is_the_url_the_client_used_and_serves_the_item(
    shape: str, state: AwsState, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = serve("items", shape, monkeypatch)
    created, root = items.call(
        "POST", "/items", body=json.dumps({"name": "Blue mug"}).encode(), headers={"content-type": "application/json"}
    )
    assert created["statusCode"] == 201
    item_id = json.loads(created["body"])["id"]
    location = urlsplit(created["headers"]["location"])
    assert location.path == f"{root}/items/{item_id}"

    fetched, _ = items.call("GET", location.path.removeprefix(root))
    assert fetched["statusCode"] == 200
    found, _ = items.call("GET", "/items/search?q=blue")
    assert json.loads(found["body"])["results"] == [{"id": item_id, "name": "Blue mug"}]


@pytest.mark.parametrize("shape", SHAPES)
def test_users_location_and_uploads_status_url_carry_the_stage_and_prefix(
    shape: str, state: AwsState, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = serve("users", shape, monkeypatch)
    registered, root = users.call(
        "POST",
        "/users",
        body=json.dumps({"name": "Jane", "email": EMAIL}).encode(),
        headers={"content-type": "application/json"},
    )
    assert registered["statusCode"] == 201
    user_id = json.loads(registered["body"])["id"]
    assert urlsplit(registered["headers"]["location"]).path == f"{root}/users/{user_id}"

    uploads = serve("uploads", shape, monkeypatch)
    boundary = "x" * 16
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
        f"Content-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n"
    ).encode()
    accepted, root = uploads.call(
        "POST", "/uploads", body=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert accepted["statusCode"] == 202
    answer = json.loads(accepted["body"])
    status_path = urlsplit(answer["status_url"]).path
    assert status_path == f"{root}/uploads/{answer['id']}"
    assert re.fullmatch(r"https?://[^/]+" + re.escape(status_path), answer["status_url"])
    fetched, _ = uploads.call("GET", status_path.removeprefix(root))
    assert fetched["statusCode"] == 200


def test_function_url_creates_and_finds_an_item_under_the_real_runtime_client(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with durable_aws_server(monkeypatch) as durable:
        names = template().local_names(environ={})
        for table, properties in template().of_type("AWS::DynamoDB::Table").items():
            create_table(names[table], properties)
        env = subprocess_env(durable, API_ROOT_PATH="/items", MAIL_BACKEND="log", DURABLE_TASKS="")
        with lambda_environment("functions.items.app.handler", env=env) as function:
            event, _ = shaped_event(
                "function-url",
                "items",
                "/items",
                method="POST",
                body=json.dumps({"name": "Green teapot"}).encode(),
                headers={"content-type": "application/json"},
            )
            created = function.invoke(event).wait_free()
            search, _ = shaped_event("function-url", "items", "/items/search", query={"q": "green"})
            found = function.invoke(search).wait_free()

    assert created.result["statusCode"] == 201
    item = json.loads(created.result["body"])
    assert urlsplit(created.result["headers"]["location"]).path == f"/items/{item['id']}"
    assert found.result["statusCode"] == 200
    assert json.loads(found.result["body"])["results"] == [{"id": item["id"], "name": "Green teapot"}]
