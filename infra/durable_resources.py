"""Task queues, idempotency and task status tables of their own, for tests that need fresh ones.

The template's own queue and table are created from template.yaml (``infra.local_resources``);
these have the same shapes (docs/durable-tasks.md): a standard queue whose ``RedrivePolicy``
moves a message to the DLQ after ``max_receives`` receives, and a table keyed by ``id``
(string) with TTL on ``expiration``, as Powertools' idempotency utility expects. Safe to call again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from botocore.exceptions import ClientError

from shared import aws

DEFAULT_QUEUE_NAME = "fastapi-tasks"
"""The queue infra/docker-compose.yml names in ``TASK_QUEUE_URL`` (the template's TaskQueue, locally)."""


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


def create_status_table(name: str) -> str:
    """template.yaml's TaskStatusTable: keyed by ``task_id`` (string), TTL on ``expires_at``."""
    client = aws.dynamodb().meta.client
    try:
        client.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "task_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "task_id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    client.update_time_to_live(TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"})
    return name
