"""One boto3 client per service per process, created on first use.

Creating clients is slow (tens of ms each), so a cold start pays only for the ones
a request needs. The SDK itself (boto3 and botocore's client machinery: about a third
of a bare FastAPI app's import time) is imported with the first client, by the first
request that calls AWS; importing a function never loads it. ``AWS_ENDPOINT_URL``
points every client at moto's server or any other local AWS; unset, the clients talk
to AWS itself.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

from shared.settings import get_settings

if TYPE_CHECKING:
    from boto3.session import Session
    from botocore.config import Config
    from mypy_boto3_dynamodb import DynamoDBServiceResource
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_ses import SESClient
    from mypy_boto3_sqs import SQSClient


_when_loaded: list[Callable[[], None]] = []
_when_loaded_lock = threading.Lock()


def when_sdk_loaded(callback: Callable[[], None]) -> None:
    """Run ``callback`` once botocore is loaded: now if it is, else when the first client is made.

    What needs botocore's classes (e.g. exception handlers for its errors) waits for the
    first request that calls AWS instead of lengthening every cold start.
    """
    with _when_loaded_lock:
        if "botocore" not in sys.modules:
            _when_loaded.append(callback)
            return
    callback()


@cache
def _session() -> Session:
    import boto3

    with _when_loaded_lock:
        callbacks = _when_loaded.copy()
        _when_loaded.clear()
    for callback in callbacks:
        callback()
    return boto3.session.Session(region_name=get_settings().aws_region)


@cache
def _config() -> Config:
    from botocore.config import Config

    return Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=3, read_timeout=10)


LONG_POLL_READ_TIMEOUT_S = 30
"""Above SQS's longest ``WaitTimeSeconds`` (20): a poll must never outlive the client's wait for it."""


@cache
def client(service: str) -> Any:
    return _session().client(service, endpoint_url=get_settings().aws_endpoint_url, config=_config())  # type: ignore[call-overload]


@cache
def resource(service: str) -> Any:
    return _session().resource(service, endpoint_url=get_settings().aws_endpoint_url, config=_config())  # type: ignore[call-overload]


def s3() -> S3Client:
    return client("s3")  # type: ignore[no-any-return]


def sqs() -> SQSClient:
    return client("sqs")  # type: ignore[no-any-return]


@cache
def sqs_long_poll() -> SQSClient:
    """The worker's ``ReceiveMessage`` client: a receive the client gave up on would hide its messages."""
    from botocore.config import Config

    config = _config().merge(Config(read_timeout=LONG_POLL_READ_TIMEOUT_S))
    return _session().client("sqs", endpoint_url=get_settings().aws_endpoint_url, config=config)


def ses() -> SESClient:
    return client("ses")  # type: ignore[no-any-return]


def dynamodb() -> DynamoDBServiceResource:
    return resource("dynamodb")  # type: ignore[no-any-return]


def reset_clients() -> None:
    """Forget every client, e.g. after a test changed the endpoint or the region."""
    for cached in (_session, client, resource, sqs_long_poll):
        cached.cache_clear()
