"""What Lambda's SQS event source mapping does for the worker, and task messages as the API functions send them."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from shared import aws
from shared.worker import make_sqs_handler
from shared.worker.poller import lambda_record
from tests.support.sqs_queues import FakeLambdaContext

REGION = "us-east-1"


class EventSourceMapping:
    """What Lambda does with the worker's role for its SQS event source (WorkerTaskSource).

    Creating the mapping reads the queue's attributes; then it receives a batch, invokes the
    function, and deletes the messages the function did not report as failed.
    """

    def __init__(self, queue_url: str) -> None:
        self.queue_url = queue_url
        self.handler = make_sqs_handler()  # functions.worker.sqs.handler, built afresh for this test's settings

    def poll_once(self) -> dict[str, Any]:
        sqs = aws.sqs()
        arn = sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        messages = sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=10,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        event = {"Records": [lambda_record(m, arn, REGION) for m in messages]}
        response: dict[str, Any] = dict(self.handler(event, FakeLambdaContext()))
        failed = {failure["itemIdentifier"] for failure in response["batchItemFailures"]}
        done = [m for m in messages if m["MessageId"] not in failed]
        if done:
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)]
            sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)  # type: ignore[arg-type]
        response["received"] = len(messages)
        return response


def enqueue(queue: str, task: str, *args: Any, tracked: bool = False, **kwargs: Any) -> str:
    """A task message as ``shared.background.sqs`` sends it, sent from the test's thread
    (``tracked``: as a function tracking the task sends it)."""
    task_id = uuid.uuid4().hex
    body = {
        "v": 1,
        "task": task,
        "task_id": task_id,
        "service": "tests",
        "attempt": 1,
        "enqueued_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "args": list(args),
        "kwargs": kwargs,
        **({"tracked": True} if tracked else {}),
    }
    aws.sqs().send_message(QueueUrl=queue, MessageBody=json.dumps(body))
    return task_id
