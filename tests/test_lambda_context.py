"""``make_handler``'s handler takes any context object, as Mangum does.

Users' own tests and harnesses call ``handler(event, {})`` or pass a minimal stub: the
request is served, its tasks run and are logged, and the Lambda keys the context lacks
are simply absent from the log lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from infra.lambda_events import http_api_event
from tests.support.logs import LogCapture

EMAIL = "foo@example.com"


@pytest.fixture(scope="module", autouse=True)
def lifespan_shut_down() -> Iterator[None]:
    """The handler starts the app's lifespan at its first call here; end it with the module."""
    yield
    from functions.notifications.app import handler

    handler.lifespan.shutdown()


@pytest.mark.parametrize(
    ("context", "present"),
    [
        ({}, set()),
        (None, set()),
        (SimpleNamespace(aws_request_id="stub-1"), {"function_request_id"}),
        (SimpleNamespace(function_name="fn", aws_request_id="stub-2"), {"function_name", "function_request_id"}),
    ],
    ids=["empty-dict", "none", "request-id-only", "name-and-request-id"],
)
def test_any_context_serves_the_request_and_logs_the_keys_it_has(
    context: Any, present: set[str], logs: LogCapture, notification_log: Path
) -> None:
    from functions.notifications.app import handler

    response = handler(http_api_event(f"/send-notification/{EMAIL}"), context)

    assert response["statusCode"] == 200
    assert json.loads(response["body"]) == {"message": "Notification sent in the background"}
    assert notification_log.read_text() == f"notification for {EMAIL}: some notification\n"
    [succeeded] = logs.named("task.succeeded")
    lambda_keys = {"function_name", "function_memory_size", "function_arn", "function_request_id"}
    assert lambda_keys & set(succeeded) == present
    assert isinstance(succeeded["cold_start"], bool)
    if "function_request_id" in present:
        assert succeeded["function_request_id"] == context.aws_request_id
