"""The worker function's durable tasks, run as on Lambda under the role template.yaml gives it.

The ``state`` fixture (conftest) runs every AWS call of the worker's thread as WorkerFunction's
role, with moto enforcing IAM: a call the role does not allow fails the test. Each task message
is queued on the test's own thread (as the API functions would), then ``EventSourceMapping``
does with the role what Lambda's SQS event source mapping does, and invokes the worker's
handler (``functions/worker/sqs.handler``) with the batch (tests/support/event_source.py).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from PIL import Image

from infra.template import template
from shared import aws
from shared.settings import get_settings
from tests.support.aws_resources import AwsState
from tests.support.event_source import EventSourceMapping, enqueue
from tests.support.logs import LogCapture


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch, state: AwsState) -> str:
    url = aws.sqs().get_queue_url(QueueName=template().local_names()["TaskQueue"])["QueueUrl"]
    monkeypatch.setenv("TASK_QUEUE_URL", url)
    get_settings.cache_clear()
    return url


@pytest.fixture
def run_worker(queue: str) -> Callable[[], dict[str, Any]]:
    """One poll of the event source mapping, on another thread: the worker's calls are made as its role."""
    mapping = EventSourceMapping(queue)

    def run() -> dict[str, Any]:
        with ThreadPoolExecutor(1) as lambda_thread:
            return lambda_thread.submit(mapping.poll_once).result()

    return run


def remaining(queue: str) -> int:
    attributes = aws.sqs().get_queue_attributes(
        QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (800, 600), "red").save(buffer, "PNG")
    return buffer.getvalue()


def test_the_welcome_email_is_sent_from_mail_sender(
    queue: str, run_worker: Callable[[], dict[str, Any]], state: AwsState
) -> None:
    enqueue(queue, "email.send_welcome", "jane@example.com", "Jane Doe")
    assert run_worker() == {"batchItemFailures": [], "received": 1}
    [email] = state.sent_emails()
    assert email.destinations["ToAddresses"] == ["jane@example.com"]
    assert email.source == state.settings.mail_sender
    assert remaining(queue) == 0


def test_an_upload_is_processed_into_facts_and_thumbnails(
    queue: str, run_worker: Callable[[], dict[str, Any]], state: AwsState
) -> None:
    aws.s3().put_object(Bucket=state.bucket, Key="uploads/u1/pic.png", Body=png())
    aws.dynamodb().Table(state.settings.uploads_table).put_item(
        Item={"id": "u1", "bucket": state.bucket, "key": "uploads/u1/pic.png", "status": "uploaded"}
    )
    enqueue(queue, "files.process_upload", "u1")
    assert run_worker() == {"batchItemFailures": [], "received": 1}
    record = state.item(state.settings.uploads_table, id="u1")
    assert record is not None
    assert record["status"] == "processed"
    assert record["facts"]["content_type"] == "image/png"
    assert len(record["thumbnails"]) == len(state.settings.thumbnail_sizes)
    assert set(record["thumbnails"]) <= set(state.s3_keys())


def test_an_item_is_indexed_for_search(queue: str, run_worker: Callable[[], dict[str, Any]], state: AwsState) -> None:
    aws.dynamodb().Table(state.settings.items_table).put_item(Item={"id": "i1", "name": "Blue kettle", "tags": []})
    enqueue(queue, "search.index_item", "i1")
    assert run_worker() == {"batchItemFailures": [], "received": 1}
    rows = state.items(state.settings.search_table)
    assert {row["sk"] for row in rows} == {"blue#i1", "kettle#i1", "terms"}


def test_an_audit_record_is_appended_once(
    queue: str, run_worker: Callable[[], dict[str, Any]], state: AwsState, logs: LogCapture
) -> None:
    """The idempotency table makes a message delivered twice one record."""
    body = ("user.registered", "user#u1", {"name": "Jane"})
    task_id = enqueue(queue, "audit.record", *body, event_id="e1", occurred_at="2026-01-01T00:00:00Z")
    assert run_worker() == {"batchItemFailures": [], "received": 1}
    redelivered = {"v": 1, "task": "audit.record", "task_id": task_id, "attempt": 1, "args": list(body)}
    redelivered |= {"kwargs": {"event_id": "e1"}, "enqueued_at": "2026-01-01T00:00:00.000+00:00"}
    aws.sqs().send_message(QueueUrl=queue, MessageBody=json.dumps(redelivered))
    assert run_worker() == {"batchItemFailures": [], "received": 1}
    [record] = state.items(state.settings.audit_table)
    assert (record["subject"], record["action"], record["event_id"]) == ("user#u1", "user.registered", "e1")
    assert logs.named("task.duplicate")


def test_a_failed_task_is_reported_kept_for_redelivery_and_runs_again(
    queue: str, run_worker: Callable[[], dict[str, Any]], state: AwsState
) -> None:
    """Its idempotency record is deleted, so the redelivered message runs the task again."""
    enqueue(queue, "files.process_upload", "no-such-upload")
    response = run_worker()
    assert (len(response["batchItemFailures"]), response["received"]) == (1, 1)
    assert remaining(queue) == 1
    assert state.items(state.settings.idempotency_table) == []
