"""Durable tasks: the ``sqs`` backend sends a request's tasks to a queue a worker drains.

``accept`` runs while the endpoint's response is being built, so a task that could never
reach the worker (no ``@task`` name, arguments that JSON would change or cannot encode, a
message over SQS's size limit) fails the request with a clear error instead of vanishing.
``dispatch`` runs after the response: ``SendMessageBatch`` in chunks of ten, failed entries
retried with backoff, and every task that still could not be sent logged by id.

The message body (a JSON object) is the contract with ``shared.worker``; see ``TaskMessage``.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import random
import re
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio.to_thread
import structlog
from pydantic import BaseModel, ConfigDict, Field

from shared import aws, tracing
from shared.background import lifecycle
from shared.background.errors import TaskRejected
from shared.background.protocols import Deferrer
from shared.background.registry import lookup, registered_name, registered_names
from shared.background.task import QueuedTask
from shared.logs import get_logger
from shared.settings import ConfigurationError, Settings, get_settings

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageAttributeValueTypeDef, SendMessageBatchRequestEntryTypeDef

log = get_logger("shared.background.sqs")

BACKEND_NAME = "sqs"
MESSAGE_VERSION = 1
BATCH_LIMIT = 10
BACKOFF_CAP_SECONDS = 5.0


class TaskMessage(BaseModel):
    """The body of one task message, as the worker reads it."""

    # Built at the worker's first message, not at every API function's cold start.
    model_config = ConfigDict(extra="ignore", frozen=True, validate_by_name=True, defer_build=True)

    v: Literal[1] = 1
    task: str
    task_id: str
    request_id: str | None = None
    service: str | None = None
    call_args: list[Any] = Field(alias="args")
    call_kwargs: dict[str, Any] = Field(alias="kwargs")
    attempt: int = 1
    enqueued_at: datetime
    traceparent: str | None = None
    tracked: bool = False


def _now() -> str:
    # Fixed width (milliseconds always present), so accept() measures the size dispatch() sends.
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _context() -> dict[str, Any]:
    context = structlog.contextvars.get_contextvars()
    trace = tracing.outgoing()
    if trace is not None:
        context["traceparent"], context["aws_trace_header"] = trace.traceparent, trace.aws_trace_header
    return context


def encode_body(task: QueuedTask, name: str, context: dict[str, Any], enqueued_at: str) -> str:
    """The JSON body of ``task``; TaskRejected if its arguments would not arrive unchanged."""
    payload = {"args": list(task.args), "kwargs": task.kwargs}
    # ensure_ascii (the default) keeps the body within the characters SQS accepts.
    try:
        encoded = json.dumps(payload, allow_nan=False, separators=(",", ":"))
    except TypeError as exc:  # a type JSON has no form for: the code passed it
        raise TaskRejected(f"task {name!r}: arguments are not JSON-serializable ({exc})") from exc
    except ValueError as exc:  # NaN or an infinity: a value, usually the client's
        raise TaskRejected(
            f"task {name!r}: arguments hold a number JSON cannot carry (NaN or an infinity)", client_input=True
        ) from exc
    if "\\ud" in encoded and not _encodable(payload):
        raise TaskRejected(
            f"task {name!r}: arguments hold text that cannot be encoded (a lone surrogate)", client_input=True
        )
    if json.loads(encoded) != payload:
        raise TaskRejected(
            f"task {name!r}: arguments would not arrive unchanged through JSON "
            "(tuples become lists, non-string dict keys become strings); pass lists and string keys"
        )
    envelope = json.dumps(
        {
            "v": MESSAGE_VERSION,
            "task": name,
            "task_id": task.task_id,
            "request_id": context.get("request_id"),
            "service": context.get("service"),
            "attempt": task.attempt,
            "enqueued_at": enqueued_at,
            "traceparent": context.get("traceparent"),
            **({"tracked": True} if task.tracked else {}),
        },
        separators=(",", ":"),
    )
    # The arguments are already encoded: splice them in instead of encoding them twice.
    return envelope[:-1] + "," + encoded[1:]


def _encodable(payload: dict[str, Any]) -> bool:
    """Whether the worker can read the text of ``payload`` back: escaped, a lone surrogate passes
    ``json.dumps``, but no UTF-8 reader (SQS, the worker's model) takes it."""
    try:
        json.dumps(payload, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def message_attributes(name: str, task: QueuedTask) -> dict[str, MessageAttributeValueTypeDef]:
    """Shown next to the body in the console and in DLQ tooling."""
    return {
        "task": {"DataType": "String", "StringValue": name},
        "task_id": {"DataType": "String", "StringValue": task.task_id},
    }


def message_size(body: str, attributes: dict[str, MessageAttributeValueTypeDef]) -> int:
    """Bytes SQS counts against its limit: the body plus each attribute's name, type and value."""
    size = len(body.encode())
    for attribute_name, value in attributes.items():
        size += len(attribute_name.encode()) + len(value["DataType"].encode())
        size += len(value.get("StringValue", "").encode())
    return size


class _Entry:
    __slots__ = ("body", "name", "size", "task", "trace_header")

    def __init__(self, task: QueuedTask, name: str, body: str, size: int, trace_header: str | None = None) -> None:
        self.task = task
        self.name = name
        self.body = body
        self.size = size
        self.trace_header = trace_header

    def request(self) -> SendMessageBatchRequestEntryTypeDef:
        entry: SendMessageBatchRequestEntryTypeDef = {
            "Id": self.task.task_id,
            "MessageBody": self.body,
            "MessageAttributes": message_attributes(self.name, self.task),
        }
        if self.trace_header:
            # X-Ray links the worker's segment to the sender's; not counted in the message size.
            entry["MessageSystemAttributes"] = {
                "AWSTraceHeader": {"DataType": "String", "StringValue": self.trace_header}
            }
        return entry


def _chunks(entries: Sequence[_Entry], max_bytes: int) -> Iterator[list[_Entry]]:
    """At most ten entries per batch, and at most ``max_bytes`` in total (SQS limits both)."""
    chunk: list[_Entry] = []
    size = 0
    for entry in entries:
        if chunk and (len(chunk) == BATCH_LIMIT or size + entry.size > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += entry.size
    if chunk:
        yield chunk


class SqsBackend:
    """Sends tasks to ``queue_url``; ``shared.worker`` runs them.

    ``defer``: on Lambda, the sends are handed to the post-response runner so they happen
    after the client has its response but before the environment is frozen.
    """

    name = BACKEND_NAME

    def __init__(
        self,
        queue_url: str,
        *,
        max_bytes: int = Settings.model_fields["task_message_max_bytes"].default,
        attempts: int = Settings.model_fields["task_enqueue_attempts"].default,
        backoff_seconds: float = Settings.model_fields["task_enqueue_backoff_seconds"].default,
        client: Callable[[], SQSClient] = aws.sqs,
        defer: Deferrer | None = None,
    ) -> None:
        self.queue_url = queue_url
        self.max_bytes = max_bytes
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self._client = client
        self._defer = defer

    @classmethod
    def from_settings(cls, settings: Settings | None = None, defer: Deferrer | None = None) -> SqsBackend:
        settings = settings or get_settings()
        if not settings.task_queue_url:
            raise ValueError("TASK_QUEUE_URL is not set")
        return cls(
            settings.task_queue_url,
            max_bytes=settings.task_message_max_bytes,
            attempts=settings.task_enqueue_attempts,
            backoff_seconds=settings.task_enqueue_backoff_seconds,
            defer=defer,
        )

    def _name(self, task: QueuedTask) -> str:
        name = registered_name(task.origin)
        if name is None:
            raise TaskRejected(
                f"task {task.name!r} is not registered: a durable task needs @task('stable.name') "
                "so the worker can find it"
            )
        try:
            registered = lookup(name)
        except KeyError:
            registered = None
        if registered is not task.origin:
            raise TaskRejected(f"task {name!r}: the function passed is not the one registered under that name")
        return name

    def _entry(self, task: QueuedTask, context: dict[str, Any], enqueued_at: str) -> _Entry:
        name = self._name(task)
        body = encode_body(task, name, context, enqueued_at)
        size = message_size(body, message_attributes(name, task))
        if size > self.max_bytes:
            raise TaskRejected(
                f"task {name!r}: message is {size} bytes, over the SQS limit of {self.max_bytes}; "
                "store large payloads (e.g. in S3) and pass a reference",
                client_input=True,
                status_code=413,
            )
        return _Entry(task, name, body, size, context.get("aws_trace_header"))

    def accept(self, task: QueuedTask) -> None:
        self._entry(task, _context(), _now())

    def warm_up(self, *, connect: bool = False) -> None:
        # A send runs in anyio's thread pool, and anyio imports its asyncio backend at its first use
        # there (tens of ms, as get_async_backend does): loaded now, the first send does not wait for it.
        import anyio._backends._asyncio  # noqa: F401  (a static import: the layer check follows it)

        client = self._client()
        if not connect:
            return
        from botocore.exceptions import ClientError  # loaded with the client, not at cold start

        # An empty batch: SQS refuses it (EmptyBatchRequest) after the connection is open and the
        # request signed, the very operation a send uses, and nothing is sent. Allowed by the
        # sqs:SendMessage a sender needs anyway; any other refusal (AccessDenied) is raised:
        # the handoff's warm-up logs it, as an early sign that sends will fail too.
        try:
            client.send_message_batch(QueueUrl=self.queue_url, Entries=[])
        except ClientError as exc:
            if not str(exc.response.get("Error", {}).get("Code", "")).endswith("EmptyBatchRequest"):
                raise

    async def dispatch(self, tasks: Sequence[QueuedTask]) -> None:
        context, enqueued_at = _context(), _now()
        entries = [self._entry(task, context, enqueued_at) for task in tasks]

        async def send() -> None:
            await self._send(entries, ends_tasks=True)

        if self._defer is not None:
            await self._defer(send, label="sqs.send")
        else:
            await send()

    async def send_now(self, tasks: Sequence[QueuedTask], message_ids: dict[str, str]) -> None:
        """Send ``tasks`` here and now (never deferred), retried as ``dispatch`` does.

        ``message_ids`` gets the message id of each task SQS took, by task id, as soon as it is
        taken (even if the send is then cut); the others were logged ``task.enqueue_failed``.
        TaskRejected if a task cannot be encoded.
        """
        context, enqueued_at = _context(), _now()
        entries = [self._entry(task, context, enqueued_at) for task in tasks]
        await self._send(entries, message_ids)

    async def _send(
        self, entries: Sequence[_Entry], message_ids: dict[str, str] | None = None, *, ends_tasks: bool = False
    ) -> None:
        """Send ``entries``; with ``ends_tasks`` (the durable route: this send is the tasks' end here)
        each ends ``task.enqueued`` or ``task.lost``; else (a handoff) the caller ends them."""
        unsent = {entry.task.task_id: entry for entry in entries}
        try:
            for chunk in _chunks(entries, self.max_bytes):
                await self._send_batch([entry.task.task_id for entry in chunk], unsent, message_ids, ends_tasks)
        except asyncio.CancelledError:
            # Cut by shutdown or the Lambda deadline: still say which tasks never left.
            if unsent:
                self._lost(list(unsent.values()), "CancelledError", "sending was cancelled", ends_tasks=ends_tasks)
            raise

    async def _send_batch(
        self,
        ids: list[str],
        unsent: dict[str, _Entry],
        message_ids: dict[str, str] | None = None,
        ends_tasks: bool = False,
    ) -> None:
        """One SendMessageBatch, retrying what failed; removes from ``unsent`` what was sent or given up."""
        from botocore.exceptions import BotoCoreError, ClientError  # loaded with the client, not at cold start

        error_type, error = "", ""
        for attempt in range(1, self.attempts + 1):
            pending = [unsent[task_id] for task_id in ids if task_id in unsent]
            if not pending:
                return
            if attempt > 1:
                delay = min(BACKOFF_CAP_SECONDS, self.backoff_seconds * 2 ** (attempt - 2))
                delay *= random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not cryptography)
                log.warning(
                    "task.enqueue_retry",
                    backend=self.name,
                    task_ids=[entry.task.task_id for entry in pending],
                    enqueue_attempt=attempt,
                    delay_s=round(delay, 3),
                    error_type=error_type,
                    error=error,
                )
                await asyncio.sleep(delay)
            request = functools.partial(
                self._client().send_message_batch,
                QueueUrl=self.queue_url,
                Entries=[entry.request() for entry in pending],
            )
            try:
                response = await anyio.to_thread.run_sync(request)
            except (BotoCoreError, ClientError) as exc:
                error_type, error = type(exc).__qualname__, str(exc)
                continue
            for sent in response.get("Successful", []):
                entry = unsent.pop(sent["Id"])
                if message_ids is not None:
                    message_ids[sent["Id"]] = sent["MessageId"]
                if ends_tasks:  # a handoff's send ends its tasks itself: task.handed_off, with the message id
                    fields = {
                        "task": entry.name,
                        "task_id": entry.task.task_id,
                        "backend": self.name,
                        "attempt": entry.task.attempt,
                    }
                    lifecycle.end("task.enqueued", fields, message_id=sent["MessageId"])
            for failure in response.get("Failed", []):
                error_type, error = failure["Code"], failure.get("Message", "")
                if failure["SenderFault"]:
                    # The entry itself is wrong (e.g. invalid characters): resending cannot help.
                    self._lost([unsent.pop(failure["Id"])], error_type, error, attempt, ends_tasks=ends_tasks)
        given_up = [unsent.pop(task_id) for task_id in ids if task_id in unsent]
        if given_up:
            self._lost(given_up, error_type, error, self.attempts, ends_tasks=ends_tasks)

    def _lost(
        self,
        entries: list[_Entry],
        error_type: str,
        error: str,
        attempts: int | None = None,
        *,
        ends_tasks: bool = False,
    ) -> None:
        log.error(
            "task.enqueue_failed",
            backend=self.name,
            queue_url=self.queue_url,
            task_ids=[entry.task.task_id for entry in entries],
            tasks=[entry.name for entry in entries],
            enqueue_attempts=attempts,
            error_type=error_type,
            error=error,
        )
        if ends_tasks:
            for entry in entries:
                fields = {"task": entry.name, "task_id": entry.task.task_id, "backend": self.name}
                lifecycle.end(
                    "task.lost", fields, level="error", reason="enqueue_failed", error=f"{error_type}: {error}"
                )


def durable_task_names(settings: Settings) -> list[str]:
    return [name.strip() for name in settings.durable_tasks.split(",") if name.strip()]


_TASK_DECLARATION = re.compile(r"""@task\(\s*["']([^"']+)["']""")


def declared_task_names(task_modules: str) -> set[str]:
    """The names ``@task("...")`` declares in ``TASK_MODULES``, the modules the worker imports.

    Read from their source, not imported: an API function must not load (nor need the
    layers of) task modules it never runs, only know that the worker will find the name.
    """
    names: set[str] = set()
    for module in (part.strip() for part in task_modules.split(",") if part.strip()):
        spec = importlib.util.find_spec(module)
        if spec is None:
            raise ConfigurationError(f"TASK_MODULES={task_modules!r}: no module named {module!r}")
        files = [Path(spec.origin)] if spec.origin and spec.origin.endswith(".py") else []
        for location in spec.submodule_search_locations or []:
            files.extend(Path(location).rglob("*.py"))
        for file in files:
            names.update(_TASK_DECLARATION.findall(file.read_text()))
    return names


def check_durable_task_names(names: list[str], task_modules: str) -> None:
    """Every name in DURABLE_TASKS must be a task: a typo would silently keep it in-process."""
    unknown = [name for name in names if name != "*" and name not in registered_names()]
    if unknown:
        known = declared_task_names(task_modules) | set(registered_names())
        unknown = [name for name in unknown if name not in known]
        if unknown:
            raise ConfigurationError(
                f"DURABLE_TASKS={','.join(names)!r}: {', '.join(map(repr, unknown))} is not a registered task; "
                f"expected names among {', '.join(sorted(known))} (or '*')"
            )
