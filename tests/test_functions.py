"""The checks every function gets by existing: a new ``functions/<name>/`` needs no edit here.

Each folder's app serves ``/health`` as itself, and its Lambda handler answers every event
shape a gateway sends (HTTP API, REST API, ALB, Function URL), built from ``infra/events``.
The other generic checks live with their subject: the template entry and role
(test_template.py), the OpenAPI fuzz (test_openapi_fuzz.py), the ``sam build`` artifact
(test_sam_build.py), the container route (test_dockerfile.py), ``make run``
(test_local_stack.py) and least privilege (every ``tests/test_<name>.py`` runs as the
function's role: tests/support/iam.py).
"""

from __future__ import annotations

import copy
import importlib
import json
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from infra.runtime_api import load_event
from tests.support.sam import function_folders, http_functions

EVENT_SHAPES = ("http-api", "apigw-v1", "alb", "function-url")


def health_event(shape: str, path: str) -> dict[str, Any]:
    """The sample event of ``shape``, turned into ``GET path``."""
    event: dict[str, Any] = copy.deepcopy(load_event(f"notifications-send-notification-{shape}.json"))
    if "rawPath" in event:
        event["rawPath"] = event["requestContext"]["http"]["path"] = path
        event["requestContext"]["http"]["method"] = "GET"
    else:
        event["path"], event["httpMethod"] = path, "GET"
        if "resourcePath" in event["requestContext"]:
            event["requestContext"]["path"] = f"/prod{path}"
    return event


@pytest.mark.parametrize("name", function_folders())
def test_each_function_serves_its_health_as_itself(name: str) -> None:
    app = importlib.import_module(f"functions.{name}.app").app
    with TestClient(app) as client:
        assert client.get("/health").json() == {"status": "ok", "service": name}
        assert client.get("/openapi.json").json()["info"]["title"]


@pytest.mark.parametrize("shape", EVENT_SHAPES)
@pytest.mark.parametrize("name", http_functions())
def test_each_routed_function_answers_every_event_shape(name: str, shape: str) -> None:
    handler = importlib.import_module(f"functions.{name}.app").handler
    context = SimpleNamespace(
        aws_request_id=f"req-{name}-{shape}",
        function_name=name,
        invoked_function_arn=f"arn:aws:lambda:us-east-1:123456789012:function:{name}",
        memory_limit_in_mb=512,
        get_remaining_time_in_millis=lambda: 30_000,
    )
    result = handler(health_event(shape, "/health"), context)
    assert result["statusCode"] == 200, result
    assert json.loads(result["body"]) == {"status": "ok", "service": name}
