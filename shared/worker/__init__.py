"""The durable-task worker: runs the task messages ``shared.background.sqs`` sends.

- on Lambda: ``make_sqs_handler()`` is the handler of an SQS event source mapping
  (``functions/worker/sqs.py``), with ``ReportBatchItemFailures`` enabled;
- in a container: ``python -m shared.worker`` long-polls ``TASK_QUEUE_URL``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse

from shared import metrics
from shared.logs import ensure_logging_configured
from shared.worker.poller import Poller
from shared.worker.processing import RemainingTime, Worker, import_task_modules

__all__ = ["Poller", "Worker", "import_task_modules", "make_sqs_handler"]

SqsHandler = Callable[[dict[str, Any], RemainingTime], PartialItemFailureResponse]


def make_sqs_handler(worker: Callable[[], Worker] | None = None) -> SqsHandler:
    """A Lambda handler for SQS events; the worker is built on the first event, not at import.

    Building it creates the DynamoDB client of the idempotency store; deferring that
    keeps it out of the init phase (and out of tests that only import the module).
    """
    ensure_logging_configured("worker")
    built: list[Worker] = []

    def handler(event: dict[str, Any], context: RemainingTime) -> PartialItemFailureResponse:
        with metrics.invocation():
            if not built:
                built.append(worker() if worker else Worker())
            return built[0].handle(event, context)

    return handler
