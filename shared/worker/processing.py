"""Run task messages from SQS: a batch's messages side by side, each at most once to completion.

Two Powertools utilities do the hard parts. The async batch processor runs a batch's messages
on one event loop and reports only the messages that failed (``batchItemFailures``), so a
failing task never sends its neighbours back to the queue; ``shared.worker.batch`` bounds how
many run at once (``WORKER_CONCURRENCY``; 1: one at a time, in order) and keeps a FIFO
message group's messages in order. The idempotency utility records each ``task_id`` in
DynamoDB, so SQS's at-least-once delivery never runs a task's side effects twice:
a task that completed is skipped when its message comes back, a failed one is
forgotten so that the next receive retries it.

Tasks run through the task layer's ``run_task``, each receive opened and ended once in its
lifecycle (``shared.background.lifecycle``): the worker's ``task.started`` /
``task.succeeded`` / ``task.failed`` lines carry the ``task_id`` and ``request_id``
of the request that queued them, ``backend: "sqs"`` and ``attempt`` = the receive count.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import importlib
import json
import os
import pkgutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, cast

import structlog
from aws_lambda_powertools.utilities.batch import AsyncBatchProcessor, EventType, async_process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency import (
    BasePersistenceLayer,
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from shared import aws, tracing
from shared.background import lifecycle, status_store
from shared.background.errors import EXIT_TASK_STUCK as EXIT_TASK_STUCK  # the worker exits with it too
from shared.background.errors import TaskStuck
from shared.background.registry import lookup, task_options
from shared.background.runner import run_task
from shared.background.sqs import BACKEND_NAME, TaskMessage
from shared.background.task import QueuedTask
from shared.logs import get_logger
from shared.settings import Settings, get_settings, module_names
from shared.worker.batch import BatchTurns, StartGate

log = get_logger("shared.worker")

IDEMPOTENCY_KEY_PREFIX = "task"
"""Keys are ``task#<md5 of task_id>``: the same for the Lambda and the container worker."""


class RemainingTime(Protocol):
    """What the worker needs of a Lambda context: how long this message may still take."""

    def get_remaining_time_in_millis(self) -> int: ...


class TaskFailed(Exception):
    """The task raised or timed out; ``run_task`` has logged why."""


class MessageRejected(Exception):
    """The message cannot be run here: unreadable body or a task this worker does not know."""


@dataclass(frozen=True)
class _Duplicate:
    """What the idempotency hook returns for a task_id that already completed."""

    stored: Any


def import_task_modules(spec: str) -> list[str]:
    """Import each comma-separated module, and every module below it when it is a package.

    Registration happens at import (``@task``), so the worker must import the modules
    the API side's tasks live in before a message names one of them.
    """
    imported: list[str] = []
    for name in module_names(spec):  # each one found on the path: Settings checked it
        module = importlib.import_module(name)
        imported.append(name)
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), prefix=f"{name}."):
            importlib.import_module(info.name)
            imported.append(info.name)
    return imported


def _ids_in(body: str) -> dict[str, Any]:
    """The ids of a message the worker cannot run, if its body still names them (never its arguments)."""
    try:
        decoded = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(decoded, dict):
        return {}
    return {key: decoded[key] for key in ("task", "task_id", "request_id") if isinstance(decoded.get(key), str)}


def receive_count(record: SQSRecord) -> int:
    try:
        return int(record.attributes.approximate_receive_count)
    except (KeyError, TypeError, ValueError):
        return 1


class Worker:
    """Runs the task messages of an SQS batch; ``handle`` is the Lambda handler's body."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        persistence_store: BasePersistenceLayer | None = None,
        max_receives: int | None = None,
        service: str = "worker",
        concurrency: int | None = None,
    ) -> None:
        settings = settings or get_settings()
        self.service = service
        self.concurrency = concurrency or settings.worker_concurrency
        import_task_modules(settings.task_modules)
        self.max_receives = max_receives or settings.task_max_receives
        self.deadline_margin_s = settings.lambda_deadline_margin_ms / 1000
        self.default_timeout = settings.task_timeout_seconds
        self.persistence_store = persistence_store or DynamoDBPersistenceLayer(
            table_name=settings.idempotency_table, boto3_client=aws.client("dynamodb")
        )
        self.idempotency = IdempotencyConfig(
            event_key_jmespath="task_id",
            raise_on_no_idempotency_key=True,
            expires_after_seconds=settings.idempotency_expiry_seconds,
            response_hook=self._duplicate,
        )
        self._run_once: Callable[..., Any] = idempotent_function(
            self._execute,
            data_keyword_argument="key",
            persistence_store=self.persistence_store,
            config=self.idempotency,
            key_prefix=IDEMPOTENCY_KEY_PREFIX,
        )
        # Configured once here: Powertools configures it on a call's first use, which two
        # messages' threads could otherwise race through.
        self.persistence_store.configure(self.idempotency, None, IDEMPOTENCY_KEY_PREFIX)
        # Powertools' idempotent_function is synchronous (blocking boto3 calls around the task): it
        # runs here, one thread per running message, and the task itself on the batch's event loop
        # (a def task in a thread of its own).
        self._threads = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="worker-message")
        if os.environ.get("LAMBDA_TASK_ROOT"):
            # On Lambda, Powertools runs each batch on this thread's current loop (one that outlives
            # a freeze); set here, Python 3.12 has no implicit loop to warn about at the first batch.
            asyncio.set_event_loop(asyncio.new_event_loop())
        self._stuck: TaskStuck | None = None
        self.last_response: PartialItemFailureResponse = {"batchItemFailures": []}
        status_store.install(settings)  # tracked tasks' steps (docs/task-status.md)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    # --- a batch -----------------------------------------------------------------------

    def handle(
        self, event: dict[str, Any], context: RemainingTime, gate: StartGate | None = None
    ) -> PartialItemFailureResponse:
        """Process an SQS event; returns the ids of the messages SQS should deliver again.

        Up to ``concurrency`` messages run side by side (``shared.worker.batch``); ``gate``
        may refuse to start the next one (the container worker stopping): it is reported failed.
        Powertools' ``AsyncBatchProcessor`` runs the batch on an event loop of its own.
        """
        # In-progress idempotency records expire with the invocation (or the visibility
        # timeout), so a message whose worker died is retried instead of blocked.
        self.idempotency.register_lambda_context(cast(LambdaContext, context))
        turns = BatchTurns(event.get("Records", []), self.concurrency, gate, halt=lambda: self._stuck is not None)

        async def record_handler(record: SQSRecord, lambda_context: RemainingTime) -> None:
            async with turns.turn(record.message_id):
                await self.process_record(record, lambda_context)

        processor = AsyncBatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
        response = async_process_partial_response(
            event=event,
            record_handler=record_handler,
            processor=processor,
            context=cast(LambdaContext, context),
        )
        self.last_response = response
        stuck, self._stuck = self._stuck, None
        if stuck is not None:
            # Its thread would run on into the next batch and beside its own retry.
            raise stuck
        return response

    # --- one message -------------------------------------------------------------------

    async def process_record(self, record: SQSRecord, lambda_context: RemainingTime) -> None:
        """Run one message's task; raise so the batch processor reports it as failed."""
        attempt = receive_count(record)
        deadline = time.monotonic() + lambda_context.get_remaining_time_in_millis() / 1000 - self.deadline_margin_s
        try:
            message, func = self._decode(record)
        except MessageRejected as exc:
            ids = _ids_in(record.body)
            fields = {**ids, "backend": BACKEND_NAME, "message_id": record.message_id, "attempt": attempt}
            if "task_id" in fields:
                lifecycle.open(fields)
                lifecycle.end("task.rejected", fields, level="error", error=str(exc))
            else:
                log.error("task.rejected", **fields, error=str(exc))
            self._dead_letter_if_last(record, attempt, None)
            raise
        fields = {"task": message.task, "task_id": message.task_id, "backend": BACKEND_NAME, "attempt": attempt}
        lifecycle.open(fields, tracked=message.tracked)
        trace = tracing.for_message(message.traceparent, record.attributes.aws_trace_header)
        with (
            structlog.contextvars.bound_contextvars(
                service=self.service, request_id=message.request_id, queued_by=message.service
            ),
            tracing.active(trace),
        ):
            try:
                result = await self._in_thread(
                    self._run_once,
                    key={"task_id": message.task_id},
                    message=message,
                    func=func,
                    attempt=attempt,
                    deadline=deadline,
                    loop=asyncio.get_running_loop(),
                )
            except IdempotencyAlreadyInProgressError:
                lifecycle.end("task.in_progress_elsewhere", fields, level="warning", message_id=record.message_id)
                self._dead_letter_if_last(record, attempt, fields)
                raise
            except TaskStuck as exc:
                self._stuck = self._stuck or exc
                raise
            except Exception as exc:
                if not isinstance(exc, TaskFailed):
                    lifecycle.end(
                        "task.worker_error", fields, level="error", message_id=record.message_id, exc_info=exc
                    )
                self._dead_letter_if_last(record, attempt, fields)
                raise
            if isinstance(result, _Duplicate):
                lifecycle.end("task.duplicate", fields, message_id=record.message_id, completed=result.stored)

    async def _in_thread(self, call: Callable[..., Any], **kwargs: Any) -> Any:
        """``call`` in one of the worker's threads, in a copy of this context (its log keys, its trace)."""
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self._threads, functools.partial(context.run, call, **kwargs)
        )

    def _decode(self, record: SQSRecord) -> tuple[TaskMessage, Callable[..., Any]]:
        try:
            message = TaskMessage.model_validate_json(record.body)
        except ValidationError as exc:
            # Where and what, never the input: a message body holds the task's arguments.
            problems = "; ".join(
                f"{'.'.join(map(str, error['loc'])) or 'body'}: {error['msg']}"
                for error in exc.errors(include_input=False, include_url=False)
            )
            raise MessageRejected(f"not a task message: {exc.error_count()} validation error(s): {problems}") from None
        try:
            return message, lookup(message.task)
        except KeyError:
            raise MessageRejected(
                f"task {message.task!r} is not registered in this worker (TASK_MODULES must import it)"
            ) from None

    def _execute(
        self,
        *,
        key: dict[str, str],
        message: TaskMessage,
        func: Callable[..., Any],
        attempt: int,
        deadline: float,
        loop: asyncio.AbstractEventLoop,
    ) -> dict[str, Any]:
        """The idempotent unit, in a worker thread: the task runs on ``loop``, the batch's event loop.

        Returns normally when the task succeeded or failed permanently.
        """
        timeout = task_options(func).timeout
        queued = QueuedTask(
            func=func,
            args=tuple(message.call_args),
            kwargs=dict(message.call_kwargs),
            name=message.task,
            task_id=message.task_id,
            attempt=attempt,
            timeout=timeout if timeout is not None else self.default_timeout,
            tracked=message.tracked,
        )
        # Scheduled from this thread, the run gets a copy of its context: this message's log keys.
        run = run_task(queued, BACKEND_NAME, deadline, finish_sync=True)
        outcome = asyncio.run_coroutine_threadsafe(run, loop).result()
        if outcome == "failed":
            raise TaskFailed(f"task {message.task!r} ({message.task_id}) failed on attempt {attempt}")
        if outcome == "failed_permanently":
            # Done with too: recorded, its message deleted, never retried nor dead-lettered.
            return {"task": message.task, "attempt": attempt, "outcome": outcome}
        return {"task": message.task, "attempt": attempt}

    def _duplicate(self, response: Any, idempotent_data: DataRecord) -> _Duplicate:
        return _Duplicate(response)

    def _dead_letter_if_last(self, record: SQSRecord, attempt: int, fields: dict[str, Any] | None) -> None:
        if attempt < self.max_receives:
            return
        log.error(
            "task.dead_lettered",
            **(fields or {"backend": BACKEND_NAME, "attempt": attempt}),
            message_id=record.message_id,
            max_receives=self.max_receives,
            consequence="SQS moves the message to the dead-letter queue instead of delivering it again",
        )
        if fields is not None:
            lifecycle.dead_lettered(fields)
