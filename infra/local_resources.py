"""Create template.yaml's tables, buckets and queues in whatever ``AWS_ENDPOINT_URL`` points at.

Used by the tests (inside moto's ``mock_aws``) and by ``make run`` (against moto's
server): every ``AWS::DynamoDB::Table``, ``AWS::S3::Bucket`` and ``AWS::SQS::Queue`` of the
template, with its key schema, TTL and redrive policy, under its local name
(``infra.template``), and the ``MailSender`` identity verified in SES. A resource added to
the template is created here with no edit. Safe to call again: what exists is left as it is.

    python -m infra.local_resources      # against $AWS_ENDPOINT_URL
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from infra.template import Template, template
from shared import aws

TABLE_PROPERTIES = ("KeySchema", "AttributeDefinitions", "GlobalSecondaryIndexes", "LocalSecondaryIndexes")
LOCAL_VISIBILITY_TIMEOUT = 60
"""Seconds, at most, before a failed task is received again locally (AWS: six times the worker's timeout)."""


def create_table(name: str, properties: Mapping[str, Any]) -> str:
    client = aws.dynamodb().meta.client
    arguments = {key: properties[key] for key in TABLE_PROPERTIES if key in properties}
    try:
        client.create_table(TableName=name, BillingMode="PAY_PER_REQUEST", **arguments)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    ttl = properties.get("TimeToLiveSpecification")
    if ttl and ttl.get("Enabled"):
        status = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"].get("TimeToLiveStatus")
        if status not in ("ENABLED", "ENABLING"):
            client.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]}
            )
    return name


def create_bucket(name: str) -> str:
    arguments: dict[str, Any] = {"Bucket": name}
    region = aws.s3().meta.region_name
    if region != "us-east-1":
        arguments["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        aws.s3().create_bucket(**arguments)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    return name


def create_queues(stack: Template, names: Mapping[str, str]) -> dict[str, str]:
    """``{logical id: URL}``; a dead-letter queue before the queues that redrive to it."""
    queues = stack.of_type("AWS::SQS::Queue")
    urls: dict[str, str] = {}
    arns: dict[str, str] = {}

    def create(logical_id: str) -> None:
        if logical_id in urls:
            return
        properties = queues[logical_id]
        attributes = {
            "VisibilityTimeout": str(min(int(properties.get("VisibilityTimeout", 30)), LOCAL_VISIBILITY_TIMEOUT)),
        }
        if "MessageRetentionPeriod" in properties:
            attributes["MessageRetentionPeriod"] = str(properties["MessageRetentionPeriod"])
        redrive = properties.get("RedrivePolicy")
        if redrive:
            target = redrive["deadLetterTargetArn"]["Fn::GetAtt"][0]
            create(target)
            receives = redrive["maxReceiveCount"]
            if isinstance(receives, dict):
                receives = stack.parameter(receives["Ref"])
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": arns[target], "maxReceiveCount": str(receives)}
            )
        url = aws.sqs().create_queue(QueueName=names[logical_id], Attributes=attributes)["QueueUrl"]  # type: ignore[arg-type]
        urls[logical_id] = url
        attributes_now = aws.sqs().get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
        arns[logical_id] = attributes_now["QueueArn"]

    for logical_id in queues:
        create(logical_id)
    return urls


def verify_sender(sender: str) -> str:
    """SES sends only from verified identities; moto and AWS's sandbox both insist."""
    aws.ses().verify_email_identity(EmailAddress=sender)
    return sender


def create_resources(stack: Template | None = None) -> dict[str, Any]:
    """Every resource of the template; returns what was created and the functions' local environment."""
    stack = stack or template()
    names = stack.local_names()
    values = {
        **{
            logical_id: create_table(names[logical_id], p)
            for logical_id, p in stack.of_type("AWS::DynamoDB::Table").items()
        },
        **{logical_id: create_bucket(names[logical_id]) for logical_id in stack.of_type("AWS::S3::Bucket")},
    }
    queues = create_queues(stack, names)
    environment = stack.environment({**values, **queues})
    return {
        "tables": [names[t] for t in stack.of_type("AWS::DynamoDB::Table")],
        "buckets": [names[b] for b in stack.of_type("AWS::S3::Bucket")],
        "queues": queues,
        "mail_sender": verify_sender(stack.parameter("MailSender")),
        "task_queue_url": environment.get("TASK_QUEUE_URL"),
        "environment": environment,
    }


if __name__ == "__main__":
    print(json.dumps(create_resources(), indent=2))
