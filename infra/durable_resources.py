"""The durable-task queue, its dead-letter queue and the idempotency table, created locally.

The same shapes as the SAM template's (docs/durable-tasks.md): a standard queue whose
``RedrivePolicy`` moves a message to the DLQ after ``TASK_MAX_RECEIVES`` receives, and a
table keyed by ``id`` (string) with TTL on ``expiration``, as Powertools' idempotency
utility expects. Safe to call again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from botocore.exceptions import ClientError

from shared import aws
from shared.settings import Settings, get_settings

DEFAULT_QUEUE_NAME = "fastapi-tasks"


@dataclass(frozen=True)
class TaskQueues:
    url: str
    arn: str
    dlq_url: str
    dlq_arn: str


def _arn(url: str) -> str:
    return aws.sqs().get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def create_task_queues(
    name: str = DEFAULT_QUEUE_NAME, *, max_receives: int = 5, visibility_timeout: int = 60
) -> TaskQueues:
    """``name`` and ``name-dlq``; the DLQ keeps messages 14 days, the maximum, for inspection."""
    sqs = aws.sqs()
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq", Attributes={"MessageRetentionPeriod": "1209600"})["QueueUrl"]
    dlq_arn = _arn(dlq_url)
    url = sqs.create_queue(
        QueueName=name,
        Attributes={
            "VisibilityTimeout": str(visibility_timeout),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receives)}),
        },
    )["QueueUrl"]
    return TaskQueues(url=url, arn=_arn(url), dlq_url=dlq_url, dlq_arn=dlq_arn)


def create_idempotency_table(name: str) -> str:
    client = aws.dynamodb().meta.client
    try:
        client.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    ttl = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        client.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"}
        )
    return name


def create_durable_resources(settings: Settings | None = None) -> dict[str, str]:
    """The queue named by ``TASK_QUEUE_URL`` (else ``fastapi-tasks``), its DLQ, the idempotency table."""
    settings = settings or get_settings()
    name = settings.task_queue_url.rstrip("/").rsplit("/", 1)[-1] if settings.task_queue_url else DEFAULT_QUEUE_NAME
    queues = create_task_queues(name, max_receives=settings.task_max_receives)
    return {
        "task_queue_url": queues.url,
        "dead_letter_queue_url": queues.dlq_url,
        "idempotency_table": create_idempotency_table(settings.idempotency_table),
    }
