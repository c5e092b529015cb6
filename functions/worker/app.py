"""Worker: runs durable tasks from the SQS queue (docs/durable-tasks.md).

``handler`` is the Lambda handler of the queue's event source mapping (SQS events,
not HTTP), defined in ``sqs.py`` so that Lambda can import it without FastAPI. ``app``
serves ``/health`` and ``/queue`` (the queue's and its dead-letter queue's depth) for a
container deployment, next to ``python -m functions.worker``.
"""

from __future__ import annotations

import json

from botocore.exceptions import BotoCoreError, ClientError
from fastapi import HTTPException, status
from pydantic import BaseModel

from functions.worker.sqs import handler
from shared import aws
from shared.app import create_app
from shared.http_errors import error_responses
from shared.settings import get_settings

__all__ = ["app", "handler"]

app = create_app("worker")

_DEPTH_ATTRIBUTES = {
    "visible": "ApproximateNumberOfMessages",
    "in_flight": "ApproximateNumberOfMessagesNotVisible",
    "delayed": "ApproximateNumberOfMessagesDelayed",
}


class QueueDepth(BaseModel):
    queue_url: str
    visible: int
    in_flight: int
    delayed: int


class QueueStatus(BaseModel):
    queue: QueueDepth
    dead_letter_queue: QueueDepth | None
    max_receive_count: int | None


def _depth(queue_url: str) -> tuple[QueueDepth, dict[str, str]]:
    response = aws.sqs().get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])
    attributes: dict[str, str] = {str(name): value for name, value in response["Attributes"].items()}
    counts = {field: int(attributes.get(name, "0")) for field, name in _DEPTH_ATTRIBUTES.items()}
    return QueueDepth(queue_url=queue_url, **counts), attributes


@app.get("/queue", tags=["ops"], responses=error_responses(502, 503))
def queue_status() -> QueueStatus:
    """How many task messages wait, run, and sit in the dead-letter queue."""
    queue_url = get_settings().task_queue_url
    if not queue_url:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "TASK_QUEUE_URL is not set")
    try:
        depth, attributes = _depth(queue_url)
        dead_letter, max_receive_count = None, None
        if "RedrivePolicy" in attributes:
            policy = json.loads(attributes["RedrivePolicy"])
            max_receive_count = int(policy["maxReceiveCount"])
            dlq_name = policy["deadLetterTargetArn"].rsplit(":", 1)[-1]
            dead_letter, _ = _depth(aws.sqs().get_queue_url(QueueName=dlq_name)["QueueUrl"])
    except (BotoCoreError, ClientError) as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"SQS: {exc}") from exc
    return QueueStatus(queue=depth, dead_letter_queue=dead_letter, max_receive_count=max_receive_count)
