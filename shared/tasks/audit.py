"""An append-only audit trail in DynamoDB: one item per action, never updated or deleted.

Table ``AUDIT_TABLE``: partition key ``subject`` (what the action was about, e.g.
``user#<id>``), sort key ``event`` (``<occurred_at ISO>#<event_id>``), so a subject's
history reads back in time order with one ``Query``. The write is conditional on the
key being new: a redelivered task (SQS is at-least-once) finds its record already
there and writes nothing, and no code path can overwrite a record. Grant the functions
only ``dynamodb:PutItem`` (and ``Query`` to read) on this table to make that a rule.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypedDict

import structlog

from shared import aws
from shared.background import task
from shared.ids import new_id
from shared.logs import get_logger
from shared.settings import get_settings

log = get_logger("shared.tasks.audit")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Stamp(TypedDict):
    event_id: str
    occurred_at: str
    request_id: str | None


def stamp() -> Stamp:
    """When, which and in which request an action happened: call it in the endpoint.

    Passing these to :func:`record` (instead of taking them when the task runs) keeps
    the record's key the same on every retry of the task, and its time the action's.
    """
    return Stamp(
        event_id=new_id(),
        occurred_at=utc_now(),
        request_id=structlog.contextvars.get_contextvars().get("request_id"),
    )


def _to_dynamodb(details: dict[str, Any]) -> dict[str, Any]:
    """DynamoDB rejects floats: go through JSON and read numbers back as Decimal."""
    result: dict[str, Any] = json.loads(json.dumps(details, default=str), parse_float=Decimal)
    return result


@task("audit.record", timeout=20)
def record(
    action: str,
    subject: str,
    details: dict[str, Any] | None = None,
    *,
    event_id: str | None = None,
    occurred_at: str | None = None,
    request_id: str | None = None,
) -> bool:
    """Append one record; False when this ``event_id`` was recorded before."""
    event_id = event_id or new_id()
    occurred_at = occurred_at or utc_now()
    context = structlog.contextvars.get_contextvars()
    item: dict[str, Any] = {
        "subject": subject,
        "event": f"{occurred_at}#{event_id}",
        "event_id": event_id,
        "action": action,
        "occurred_at": occurred_at,
        "recorded_at": utc_now(),
        "details": _to_dynamodb(details or {}),
        "service": context.get("service", get_settings().service_name),
    }
    request_id = request_id or context.get("request_id")
    if request_id:
        item["request_id"] = request_id
    table = aws.dynamodb().Table(get_settings().audit_table)
    from botocore.exceptions import ClientError  # loaded with the client, not at cold start

    try:
        table.put_item(Item=item, ConditionExpression="attribute_not_exists(subject)")
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
            raise
        log.info("audit.duplicate", action=action, subject=subject, event_id=event_id)
        return False
    log.info("audit.recorded", action=action, subject=subject, event_id=event_id)
    return True


def history(subject: str, limit: int = 100) -> list[dict[str, Any]]:
    """The records of ``subject``, oldest first."""
    table = aws.dynamodb().Table(get_settings().audit_table)
    response = table.query(
        KeyConditionExpression="#subject = :subject",
        ExpressionAttributeNames={"#subject": "subject"},
        ExpressionAttributeValues={":subject": subject},
        Limit=limit,
    )
    return list(response["Items"])
