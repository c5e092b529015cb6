"""HTTP events for the Lambda tests, derived from the SAM-generated files in ``infra/events``."""

from __future__ import annotations

import base64
import copy
import hashlib
import uuid
from typing import Any
from urllib.parse import urlencode

from infra.runtime_api import load_event

_HTTP_API = load_event("notifications-send-notification-http-api.json")
_REST_API = load_event("notifications-send-notification-apigw-v1.json")
_FUNCTION_URL = load_event("notifications-send-notification-function-url.json")
_ALB = load_event("notifications-send-notification-alb.json")

SHAPES = ("rest-api", "http-api", "http-api-stage", "function-url", "alb")
"""Every way a request reaches a function: a REST API (stage ``prod``), the HTTP API's ``$default``
stage and a named one (``prod``), a Function URL and an ALB (rule ``/<name>/*``)."""


def http_api_event(
    path: str,
    *,
    method: str = "POST",
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
    route_key: str = "$default",
    stage: str = "$default",
    body: bytes | None = None,
) -> dict[str, Any]:
    """An HTTP API (payload v2) event for ``method path``; its API Gateway request id is unique."""
    event = copy.deepcopy(_HTTP_API)
    event["rawPath"] = path
    event["rawQueryString"] = urlencode(query or {})
    event["routeKey"] = route_key
    event["headers"] = {**event["headers"], **(headers or {})}
    context = event["requestContext"]
    context["http"]["path"] = path
    context["http"]["method"] = method
    context["routeKey"] = route_key
    context["stage"] = stage
    context["requestId"] = request_id or f"apigw-{uuid.uuid4().hex[:12]}"
    _set_body(event, body)
    return event


def _set_body(event: dict[str, Any], body: bytes | None) -> None:
    if body is not None:
        event["body"] = base64.b64encode(body).decode()
        event["isBase64Encoded"] = True


def shaped_event(
    shape: str,
    function: str,
    app_path: str,
    *,
    method: str = "GET",
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[dict[str, Any], str]:
    """The event ``shape`` delivers for ``method app_path`` of ``function`` as ``template.yaml``
    routes it (``/<function>/{proxy+}``), and the URL prefix the client used before ``app_path``."""
    prefix = f"/{function}"
    if shape in ("http-api", "http-api-stage"):
        stage = "prod" if shape == "http-api-stage" else "$default"
        root = f"/prod{prefix}" if shape == "http-api-stage" else prefix
        event = http_api_event(
            root + app_path,
            method=method,
            query=query,
            headers={"host": "api-id.execute-api.us-east-1.amazonaws.com", **(headers or {})},
            route_key=f"ANY {prefix}/{{proxy+}}",
            stage=stage,
            body=body,
        )
        return event, root
    if shape == "function-url":
        event = copy.deepcopy(_FUNCTION_URL)
        event["rawPath"] = event["requestContext"]["http"]["path"] = app_path
        event["requestContext"]["http"]["method"] = method
        event["requestContext"]["requestId"] = f"url-{uuid.uuid4().hex[:12]}"
        event["rawQueryString"] = urlencode(query or {})
        event["headers"] = {**event["headers"], **(headers or {})}
        _set_body(event, body)
        return event, ""
    if shape == "rest-api":
        event = copy.deepcopy(_REST_API)
        event["resource"] = f"{prefix}/{{proxy+}}"
        event["path"] = prefix + app_path
        event["pathParameters"] = {"proxy": app_path.lstrip("/")}
        event["httpMethod"] = method
        event["requestContext"].update(
            path=f"/prod{prefix}{app_path}", resourcePath=event["resource"], httpMethod=method, stage="prod"
        )
        event["requestContext"]["requestId"] = f"rest-{uuid.uuid4().hex[:12]}"
        event["queryStringParameters"] = query or None
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in (query or {}).items()} or None
        event["headers"] = {**event["headers"], **(headers or {})}
        event["multiValueHeaders"] = {k: [v] for k, v in event["headers"].items()}
        _set_body(event, body)
        return event, f"/prod{prefix}"
    if shape == "alb":
        event = copy.deepcopy(_ALB)
        event["path"] = prefix + app_path
        event["httpMethod"] = method
        event["queryStringParameters"] = query or {}
        event["headers"] = {**event["headers"], **(headers or {})}
        _set_body(event, body)
        return event, prefix
    raise ValueError(f"unknown event shape {shape!r}; one of {SHAPES}")


def sqs_event(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Received messages as the SQS event Lambda's event source mapping delivers them."""
    template = load_event("worker-sqs-task.json")["Records"][0]
    records = []
    for message in messages:
        record = copy.deepcopy(template)
        record.update(
            messageId=message["MessageId"],
            receiptHandle=message["ReceiptHandle"],
            body=message["Body"],
            md5OfBody=hashlib.md5(message["Body"].encode(), usedforsecurity=False).hexdigest(),  # SQS's MD5OfBody
        )
        record["attributes"]["ApproximateReceiveCount"] = message["Attributes"]["ApproximateReceiveCount"]
        records.append(record)
    return {"Records": records}
