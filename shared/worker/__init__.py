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
from shared.background import lifecycle
from shared.background.errors import TaskStuck
from shared.lambda_keys import lambda_keys_bound
from shared.logs import ensure_logging_configured, get_logger
from shared.settings import get_settings
from shared.worker.poller import Poller
from shared.worker.processing import EXIT_TASK_STUCK, RemainingTime, Worker, import_task_modules

__all__ = ["Poller", "Worker", "import_task_modules", "make_sqs_handler"]

log = get_logger("shared.worker")

SqsHandler = Callable[[dict[str, Any], RemainingTime], PartialItemFailureResponse]


def make_sqs_handler(worker: Callable[[], Worker] | None = None) -> SqsHandler:
    """A Lambda handler for SQS events; the worker is built on the first event, not at import.

    Building it creates the DynamoDB client of the idempotency store; deferring that
    keeps it out of the init phase (and out of tests that only import the module).
    A sync task still running at the invocation's deadline ends the process: Lambda
    starts a fresh environment, so its thread cannot run on into later invocations.
    """
    get_settings()  # a wrong setting fails the init phase, with its one-line message
    ensure_logging_configured("worker")
    built: list[Worker] = []

    def handler(event: dict[str, Any], context: RemainingTime) -> PartialItemFailureResponse:
        # The Lambda keys HTTP functions log, on every line of the invocation.
        with lambda_keys_bound(context), metrics.invocation():
            if not built:
                built.append(worker() if worker else Worker())
            try:
                return built[0].handle(event, context)
            except TaskStuck as exc:
                log.critical("worker.exiting", reason=str(exc), exit_code=EXIT_TASK_STUCK)
                lifecycle.after_lost_at_exit(metrics.flush)
                lifecycle.exit_process(EXIT_TASK_STUCK, str(exc))

    return handler
