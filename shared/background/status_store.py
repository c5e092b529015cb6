"""The status of tracked tasks, in DynamoDB: what ``GET /<function>/tasks/{task_id}`` shows.

``StatusRecorder`` is the lifecycle's ``TaskObserver``: told of each step of a tracked task, it
writes the task's one record (keyed by ``task_id``). The queued records of one request are
written together, in one ``BatchWriteItem``, before its response starts (``pending_records``,
the HTTP middleware in ``shared.task_status`` flushes them); every later step is one
``UpdateItem``, conditional on a step number (``seq``) so that a late write never takes a record
back (the API's ``handed_off`` arriving after the worker's ``running``).

No argument of the task is written; an error is its exception type and its message, masked like
the logs; a result is what the task returned, if it is JSON and small (``TASK_STATUS_RESULT_MAX_BYTES``).
A status write that fails is logged ``task.status_write_failed`` (counted) and never fails the task.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared import aws
from shared.background import lifecycle
from shared.background.task import take_result
from shared.logs import bound, get_logger, mask_emails
from shared.settings import Settings, running_on_lambda

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

log = get_logger("shared.background")

BATCH_LIMIT = 25
"""Items per BatchWriteItem (DynamoDB's limit)."""
MESSAGE_MAX_CHARS = 1000
"""An error message is cut to this length in the record."""

DONE = frozenset({"succeeded", "failed", "timed_out", "cancelled", "rejected", "lost", "dead_lettered"})
"""States after which nothing more happens to the task."""

_IN_PROCESS_STATE = {
    "task.succeeded": "succeeded",
    "task.failed": "failed",
    "task.timed_out": "timed_out",
    "task.cancelled": "cancelled",
    "task.rejected": "rejected",
    "task.lost": "lost",
    "task.handed_off": "handed_off",
    "task.enqueued": "enqueued",
}
"""The end of a task in the process that accepted it → its state."""

_WORKER_FINAL = {"task.succeeded": "succeeded", "task.rejected": "rejected", "task.dead_lettered": "dead_lettered"}
_WORKER_RETRIED = frozenset({"task.failed", "task.timed_out", "task.cancelled", "task.worker_error"})
"""On the worker, this receive ended and SQS delivers the message again: ``retrying``."""

_pending: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar(
    "task_status_pending", default=None
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class StatusStore:
    """The table's three calls; ``client`` is a DynamoDB client (created on first use)."""

    def __init__(self, table: str, client: Callable[[], Any] | None = None) -> None:
        self.table = table
        self._client = client or (lambda: aws.client("dynamodb"))

    def put_all(self, items: Sequence[dict[str, Any]]) -> None:
        """Write ``items`` (new records) in as few BatchWriteItem calls as DynamoDB allows (25 each)."""
        for start in range(0, len(items), BATCH_LIMIT):
            requests = [{"PutRequest": {"Item": _encode(item)}} for item in items[start : start + BATCH_LIMIT]]
            for _ in range(3):  # unprocessed items (throttling) are sent again, twice at most
                answer = self._client().batch_write_item(RequestItems={self.table: requests})
                requests = answer.get("UnprocessedItems", {}).get(self.table, [])
                if not requests:
                    break
            if requests:
                raise RuntimeError(f"DynamoDB left {len(requests)} status record(s) unprocessed")

    def update(self, task_id: str, seq: int, values: dict[str, Any]) -> bool:
        """Set ``values`` on the record unless it has moved past step ``seq``; False if it had."""
        names = {f"#a{index}": name for index, name in enumerate(["seq", *values])}
        placeholders = {name: key for key, name in names.items()}
        attribute_values = {":seq": {"N": str(seq)}, **{f":v{i}": _value(v) for i, v in enumerate(values.values())}}
        sets = [f"{placeholders['seq']} = :seq"] + [
            f"{placeholders[name]} = :v{index}" for index, name in enumerate(values)
        ]
        try:
            self._client().update_item(
                TableName=self.table,
                Key={"task_id": {"S": task_id}},
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression=f"attribute_not_exists({placeholders['seq']}) OR {placeholders['seq']} <= :seq",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=attribute_values,
            )
        except Exception as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def get(self, task_id: str) -> dict[str, Any] | None:
        item = self._client().get_item(TableName=self.table, Key={"task_id": {"S": task_id}}, ConsistentRead=True)
        found = item.get("Item")
        return None if found is None else {key: _decode(value) for key, value in found.items()}


def _value(value: Any) -> dict[str, Any]:
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int):
        return {"N": str(value)}
    if isinstance(value, dict):
        return {"M": {key: _value(inner) for key, inner in value.items()}}
    return {"S": str(value)}


def _encode(item: dict[str, Any]) -> dict[str, Any]:
    return {key: _value(value) for key, value in item.items()}


def _decode(value: dict[str, Any]) -> Any:
    kind, inner = next(iter(value.items()))
    if kind == "N":
        return int(inner)
    if kind == "NULL":
        return None
    if kind == "M":
        return {key: _decode(nested) for key, nested in inner.items()}
    return inner


@contextmanager
def pending_records() -> Iterator[list[dict[str, Any]]]:
    """Within: the queued records of tracked tasks are collected in the list given, not written
    (the caller writes them, all at once, before the response starts)."""
    records: list[dict[str, Any]] = []
    token = _pending.set(records)
    try:
        yield records
    finally:
        _pending.reset(token)


class StatusRecorder:
    """The lifecycle's observer: each step of a tracked task, written to ``store``.

    In a container, a step after the response is written by a thread of its own, in order: the event
    loop serving the other requests never waits for DynamoDB. On Lambda and on the worker it is
    written before the call returns (a frozen environment would hold a write back until its next
    invocation). A step on the worker (``on_worker``) numbers after every step of the API's, attempt
    by attempt, so that the API's late ``handed_off`` or ``enqueued`` never hides the worker's ``running``.
    """

    def __init__(self, store: StatusStore, settings: Settings, *, in_background: bool | None = None) -> None:
        self.store = store
        self.ttl_s = settings.task_status_ttl_seconds
        self.result_max_bytes = settings.task_status_result_max_bytes
        self.in_background = not running_on_lambda() if in_background is None else in_background
        self._writer: ThreadPoolExecutor | None = None

    # --- TaskObserver ----------------------------------------------------------------------

    def accepted(self, fields: dict[str, Any]) -> None:
        now = _now()
        record = {
            "task_id": fields["task_id"],
            "task": fields["task"],
            "state": "queued",
            "done": False,
            "backend": fields["backend"],
            "attempt": fields["attempt"],
            "request_id": fields.get("request_id"),
            "queued_at": now,
            "updated_at": now,
            "seq": 0,
            "expires_at": self._expires_at(),
        }
        pending = _pending.get()
        if pending is not None:
            pending.append(record)
        else:
            self.write_queued([record])

    def started(self, fields: dict[str, Any], *, on_worker: bool) -> None:
        values = {"started_at": _now(), "invocation": bound("function_request_id")}
        self._update(fields, "running", 1, values, on_worker=on_worker)

    def ended(self, event: str, fields: dict[str, Any], extra: dict[str, Any], *, on_worker: bool) -> None:
        result = take_result(fields["task_id"])
        state, phase = _state(event, extra, on_worker=on_worker)
        if state is None:
            return
        values: dict[str, Any] = {}
        if state in DONE:
            values["ended_at"] = _now()
        error = _error(extra)
        if error is not None:
            values["error"] = error
        if state == "succeeded" and result is not None:
            values.update(self._result(result))
        if state == "dead_lettered":
            values["error_note"] = "the last allowed attempt failed: the message is in the dead-letter queue"
        self._update(fields, state, phase, values, on_worker=on_worker)

    # --- writes -----------------------------------------------------------------------------

    def write_queued(self, records: Sequence[dict[str, Any]]) -> None:
        """One batch write of ``records``; a failure is logged and counted, never raised."""
        if not records:
            return
        try:
            self.store.put_all(records)
        except Exception as exc:
            for record in records:
                self._failed("queued", record, exc)

    def _update(
        self, fields: dict[str, Any], state: str, phase: int, values: dict[str, Any], *, on_worker: bool
    ) -> None:
        attempt = int(fields.get("attempt") or 1)
        seq = (attempt * 10 if on_worker else 0) + phase
        common = {
            "task": fields["task"],
            "state": state,
            "done": state in DONE,
            "backend": fields["backend"],
            "attempt": attempt,
            "updated_at": _now(),
            "expires_at": self._expires_at(),
        }
        if fields.get("request_id"):
            common["request_id"] = fields["request_id"]
        item = {**common, **values}
        if not on_worker and self.in_background and asyncio._get_running_loop() is not None:
            if self._writer is None:
                # Only a server writes off the event loop: a Lambda cold start skips the thread pool's import.
                from concurrent.futures import ThreadPoolExecutor

                self._writer = ThreadPoolExecutor(1, thread_name_prefix="task-status")
            try:
                self._writer.submit(contextvars.copy_context().run, self._write, fields, seq, state, item)
                return
            except RuntimeError:  # the interpreter is exiting (task.lost at exit): write it here
                pass
        self._write(fields, seq, state, item)

    def drain(self) -> None:
        """Wait until every step handed to the writing thread so far is written."""
        writer = self._writer
        if writer is not None:
            writer.submit(lambda: None).result()

    def flush(self) -> None:
        """Wait for the steps still being written (the process is exiting); later ones are written at once."""
        self.in_background = False
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown(wait=True)

    def _write(self, fields: dict[str, Any], seq: int, state: str, item: dict[str, Any]) -> None:
        try:
            self.store.update(fields["task_id"], seq, item)
        except Exception as exc:
            self._failed(state, fields, exc)

    def _failed(self, state: str, fields: dict[str, Any], exc: Exception) -> None:
        log.error(
            "task.status_write_failed",
            task=fields.get("task"),
            task_id=fields.get("task_id"),
            backend=fields.get("backend"),
            state=state,
            error=f"{type(exc).__name__}: {exc}",
            consequence="the task runs on; its status record is out of date",
        )

    # --- values -----------------------------------------------------------------------------

    def _expires_at(self) -> int:
        return int(time.time()) + self.ttl_s

    def _result(self, result: Any) -> dict[str, Any]:
        try:
            text = json.dumps(mask_emails(result), allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            return {"result_refused": f"not JSON-serialisable: {exc}"}
        size = len(text.encode())
        if size > self.result_max_bytes:
            return {
                "result_refused": f"{size} bytes of JSON, over TASK_STATUS_RESULT_MAX_BYTES ({self.result_max_bytes}): "
                "store a large result yourself (S3) and return its key"
            }
        return {"result": text}


def _error(extra: dict[str, Any]) -> dict[str, Any] | None:
    """The exception type and its masked message; or the reason a task ended without one."""
    exc = extra.get("exc_info")
    if isinstance(exc, BaseException):
        message = mask_emails(str(exc))[:MESSAGE_MAX_CHARS]
        return {"type": type(exc).__name__, "message": message}
    reason = extra.get("error") or extra.get("reason")
    if reason:
        return {"type": None, "message": mask_emails(str(reason))[:MESSAGE_MAX_CHARS]}
    return None


def _state(event: str, extra: dict[str, Any], *, on_worker: bool) -> tuple[str | None, int]:
    """The state ``event`` puts the record in, and its step within the attempt (None: no change)."""
    if not on_worker:
        return _IN_PROCESS_STATE.get(event), 2
    if event in _WORKER_FINAL:
        return _WORKER_FINAL[event], 3
    if event == "task.failed" and extra.get("permanent"):
        return "failed", 3
    if event in _WORKER_RETRIED:
        return "retrying", 2
    return None, 0  # task.duplicate, task.in_progress_elsewhere: another receive owns the record


_installed: list[StatusRecorder] = []


def drain() -> None:
    """Wait for the status writes in flight (tests: before the local AWS they write to goes away)."""
    for recorder in _installed:
        recorder.drain()


def _flush_installed() -> None:
    for recorder in _installed:
        recorder.flush()


def install(settings: Settings) -> StatusRecorder:
    """Record every tracked task of this process in ``TASK_STATUS_TABLE`` from now on.

    One recorder per process: a later install (the next app of a gateway, the next worker of a
    test) replaces the previous one once its writes in flight are written.
    """
    _flush_installed()
    recorder = StatusRecorder(StatusStore(settings.task_status_table), settings)
    _installed[:] = [recorder]
    lifecycle.observe(recorder)
    lifecycle.after_lost_at_exit(_flush_installed)  # exit_process ends the process without joining threads
    return recorder
