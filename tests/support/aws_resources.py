"""The project's AWS resources inside moto's ``mock_aws``, and what tests read back from them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID  # type: ignore[attr-defined]
from moto.ses.models import ses_backends

from infra.local_resources import create_resources
from infra.template import template
from shared import aws
from shared.background import status_store
from shared.settings import Settings, get_settings


class AwsState:
    """Reads what the functions wrote: S3 objects, DynamoDB items, sent e-mails."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def bucket(self) -> str:
        return self.settings.uploads_bucket

    def s3_keys(self, prefix: str = "") -> list[str]:
        pages = aws.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def s3_object(self, key: str) -> dict[str, Any]:
        return dict(aws.s3().get_object(Bucket=self.bucket, Key=key))

    def s3_body(self, key: str) -> bytes:
        return aws.s3().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def multipart_uploads(self) -> list[Any]:
        return list(aws.s3().list_multipart_uploads(Bucket=self.bucket).get("Uploads", []))

    def items(self, table: str) -> list[dict[str, Any]]:
        return list(aws.dynamodb().Table(table).scan()["Items"])

    def item(self, table: str, **key: str) -> dict[str, Any] | None:
        return aws.dynamodb().Table(table).get_item(Key=key).get("Item")

    def sent_emails(self) -> list[Any]:
        """moto's record of every SES message sent: ``.source``, ``.destinations``, ``.subject``, ``.body``."""
        return list(ses_backends[DEFAULT_ACCOUNT_ID][self.settings.aws_region].sent_messages)

    def tables(self) -> list[str]:
        """Every table of template.yaml but the worker's idempotency table."""
        names = template().local_names()
        return [names[t] for t in template().of_type("AWS::DynamoDB::Table") if t != "IdempotencyTable"]

    def snapshot(self) -> dict[str, Any]:
        """Everything stored, to prove that a rejected request wrote nothing."""
        return {
            "s3": self.s3_keys(),
            "multipart": self.multipart_uploads(),
            "tables": {name: sorted(map(repr, self.items(name))) for name in self.tables()},
            "emails": len(self.sent_emails()),
        }


_fresh_session = False


def _forget_clients() -> None:
    """New clients for this endpoint; the boto3 session (and its parsed API models) stays.

    moto hooks into sessions created after it was imported, so the first call also
    replaces a session that may be older than that.
    """
    global _fresh_session
    if not _fresh_session:
        aws.reset_clients()
        _fresh_session = True
    aws.client.cache_clear()
    aws.resource.cache_clear()


@contextmanager
def mocked_aws() -> Iterator[AwsState]:
    """moto's in-process AWS with template.yaml's resources (``create_resources``)."""
    with mock_aws():
        _forget_clients()
        try:
            create_resources()
            yield AwsState(get_settings())
        finally:
            status_store.drain()  # status writes still in flight reach this moto, not what follows it
            _forget_clients()
