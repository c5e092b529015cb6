"""Create the project's AWS resources in whatever ``AWS_ENDPOINT_URL`` points at.

Used by the tests (inside moto's ``mock_aws``) and by ``make run`` (against moto's
server), so both get the same bucket, tables and verified sender as the functions
expect. Safe to call again: what already exists is left as it is. On AWS itself the
SAM template creates these resources; keep the key schemas here and there the same.

    python -m infra.local_resources      # against $AWS_ENDPOINT_URL
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from infra.durable_resources import create_durable_resources
from shared import aws
from shared.settings import Settings, get_settings


@dataclass(frozen=True)
class TableSpec:
    name: str
    hash_key: str
    range_key: str | None = None

    def create_arguments(self) -> dict[str, Any]:
        keys = [(self.hash_key, "HASH")] + ([(self.range_key, "RANGE")] if self.range_key else [])
        return {
            "TableName": self.name,
            "KeySchema": [{"AttributeName": name, "KeyType": kind} for name, kind in keys],
            "AttributeDefinitions": [{"AttributeName": name, "AttributeType": "S"} for name, _ in keys],
            "BillingMode": "PAY_PER_REQUEST",
        }


def table_specs(settings: Settings) -> list[TableSpec]:
    """The tables of the users, uploads and items functions (schemas: docs/functions.md)."""
    return [
        TableSpec(settings.users_table, "id"),
        TableSpec(settings.audit_table, "subject", "event"),
        TableSpec(settings.items_table, "id"),
        TableSpec(settings.search_table, "pk", "sk"),
        TableSpec(settings.uploads_table, "id"),
    ]


def create_tables(settings: Settings, specs: list[TableSpec] | None = None) -> list[str]:
    client = aws.dynamodb().meta.client
    names = []
    for spec in specs if specs is not None else table_specs(settings):
        try:
            status: str = client.create_table(**spec.create_arguments())["TableDescription"]["TableStatus"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceInUseException":
                raise
            status = "EXISTS"
        if status != "ACTIVE":
            client.get_waiter("table_exists").wait(TableName=spec.name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
        names.append(spec.name)
    return names


def create_bucket(settings: Settings) -> str:
    arguments: dict[str, Any] = {"Bucket": settings.uploads_bucket}
    if settings.aws_region != "us-east-1":
        arguments["CreateBucketConfiguration"] = {"LocationConstraint": settings.aws_region}
    try:
        aws.s3().create_bucket(**arguments)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    return settings.uploads_bucket


def verify_sender(settings: Settings) -> str:
    """SES sends only from verified identities; moto and AWS's sandbox both insist."""
    aws.ses().verify_email_identity(EmailAddress=settings.mail_sender)
    return settings.mail_sender


def create_resources(settings: Settings | None = None) -> dict[str, Any]:
    """Everything the functions need; returns what was created, for printing."""
    settings = settings or get_settings()
    created: dict[str, Any] = {
        "bucket": create_bucket(settings),
        "tables": create_tables(settings),
        "mail_sender": verify_sender(settings),
    }
    created["durable_tasks"] = create_durable_resources(settings)
    return created


if __name__ == "__main__":
    print(create_resources())
