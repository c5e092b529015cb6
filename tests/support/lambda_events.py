"""HTTP events for the Lambda tests, derived from the SAM-generated files in ``infra/events``."""

from __future__ import annotations

import copy
import hashlib
import uuid
from typing import Any
from urllib.parse import urlencode

from tests.support.runtime_api import load_event

_HTTP_API = load_event("notifications-send-notification-http-api.json")


def http_api_event(
    path: str,
    *,
    method: str = "POST",
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """An HTTP API (payload v2) event for ``method path``; its API Gateway request id is unique."""
    event = copy.deepcopy(_HTTP_API)
    event["rawPath"] = path
    event["rawQueryString"] = urlencode(query or {})
    event["headers"] = {**event["headers"], **(headers or {})}
    context = event["requestContext"]
    context["http"]["path"] = path
    context["http"]["method"] = method
    context["requestId"] = request_id or f"apigw-{uuid.uuid4().hex[:12]}"
    return event


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
            md5OfBody=hashlib.md5(message["Body"].encode()).hexdigest(),
        )
        record["attributes"]["ApproximateReceiveCount"] = message["Attributes"]["ApproximateReceiveCount"]
        records.append(record)
    return {"Records": records}
