"""Run tasks one by one, each isolated, each logged from start to end.

A task that raises, times out or is cancelled is logged with its exception and the
next task still runs: plain Starlette would skip every task after the first failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

import anyio.to_thread

from shared.background import handoff as handoffs
from shared.background.handoff import DEADLINE, Decision, Handoff
from shared.background.task import QueuedTask
from shared.logs import get_logger, mask_emails
from shared.metrics import observed
from shared.settings import get_settings

log = observed(get_logger("shared.background"))


class TaskTimeout(Exception):
    """A task ran past its own timeout or the invocation deadline."""


class PermanentTaskError(Exception):
    """Raise it (or an exception class derived from it) when running the task again cannot help.

    A bad file a user uploaded, arguments the task itself finds invalid: the worker logs
    ``task.failed`` with ``permanent: true`` and deletes the message, which is neither
    retried nor dead-lettered (the dead-letter queue is for failures someone must fix).
    """


Outcome = Literal["succeeded", "failed", "failed_permanently"]


def _failed(fields: dict[str, Any], exc: BaseException, **extra: Any) -> Outcome:
    if isinstance(exc, PermanentTaskError):
        log.error("task.failed", **fields, **extra, permanent=True, exc_info=exc)
        return "failed_permanently"
    log.error("task.failed", **fields, **extra, exc_info=exc)
    return "failed"


class TaskStuck(Exception):
    """A sync task still runs at its hard deadline: only ending the process stops its thread."""


def task_fields(task: QueuedTask, backend: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "task": task.name,
        "task_id": task.task_id,
        "backend": backend,
        "attempt": task.attempt,
    }
    if get_settings().log_task_args:
        fields["task_args"] = mask_emails(list(task.args))
        fields["task_kwargs"] = mask_emails(task.kwargs)
    return fields


async def _call(task: QueuedTask) -> None:
    if task.is_async:
        await task.func(*task.args, **task.kwargs)
    else:
        # abandon_on_cancel: a timed-out sync task cannot be stopped, but we stop waiting for it.
        await anyio.to_thread.run_sync(functools.partial(task.func, *task.args, **task.kwargs), abandon_on_cancel=True)


def _time_left(task: QueuedTask, deadline: float | None) -> float | None:
    """Seconds this task may run: its own timeout, capped by the deadline (monotonic)."""
    limits = [task.timeout] if task.timeout is not None else []
    if deadline is not None:
        limits.append(deadline - time.monotonic())
    return min(limits) if limits else None


def _start_thread(task: QueuedTask) -> asyncio.Future[Any]:
    """Run a sync task in a daemon thread of its own: nothing waits for it at exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    def target() -> None:
        try:
            result, error = context.run(task.func, *task.args, **task.kwargs), None
        except BaseException as exc:  # handed to the awaiting side
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: the process is ending
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name=f"task-{task.task_id}", daemon=True).start()
    return future


async def _run_sync_to_its_end(task: QueuedTask, fields: dict[str, Any], deadline: float | None) -> Outcome:
    """A sync task on the durable path: its timeout is reported, never pretended.

    A thread cannot be stopped, so past ``task.timeout`` the task is left to finish and
    ``task.overrunning`` says so; its real outcome is logged when it ends, so a task that
    succeeds late is not run again. At ``deadline`` (the message becomes visible again,
    or Lambda ends the invocation) it raises TaskStuck: the caller must end the process.
    """
    started = time.perf_counter()

    def elapsed_ms() -> float:
        return round((time.perf_counter() - started) * 1000, 3)

    future = _start_thread(task)
    hard_left = None if deadline is None else deadline - time.monotonic()
    soft = task.timeout if task.timeout is not None and (hard_left is None or task.timeout < hard_left) else None
    overran: dict[str, Any] = {}
    try:
        done, _ = await asyncio.wait({future}, timeout=soft if soft is not None else hard_left)
        if not done and soft is not None:
            overran = {"overran": True, "timeout_s": soft}
            log.warning(
                "task.overrunning",
                **fields,
                timeout_s=soft,
                duration_ms=elapsed_ms(),
                consequence="a sync task cannot be stopped: it runs on, its message stays invisible until it ends",
            )
            left = None if deadline is None else deadline - time.monotonic()
            done, _ = await asyncio.wait({future}, timeout=left)
    except asyncio.CancelledError:
        log.error("task.cancelled", **fields, started=True, duration_ms=elapsed_ms())
        raise
    duration_ms = elapsed_ms()
    if not done:
        log.error(
            "task.timed_out", **fields, started=True, still_running=True, duration_ms=duration_ms, timeout_s=hard_left
        )
        raise TaskStuck(f"task {task.name!r} ({task.task_id}) still runs at its deadline")
    error = future.exception()
    if error is not None:
        return _failed(fields, error, **overran, duration_ms=duration_ms)
    log.info("task.succeeded", **fields, **overran, duration_ms=duration_ms)
    return "succeeded"


async def run_task(
    task: QueuedTask, backend: str, deadline: float | None = None, handoff: Handoff | None = None
) -> bool:
    """Run one task; True when it succeeded. Never raises, except to pass on cancellation."""
    return await run_task_outcome(task, backend, deadline, handoff=handoff) == "succeeded"


async def run_task_outcome(
    task: QueuedTask,
    backend: str,
    deadline: float | None = None,
    *,
    finish_sync: bool = False,
    handoff: Handoff | None = None,
) -> Outcome:
    """Run one task and say how it ended; never raises, except to pass on cancellation.

    ``finish_sync`` (the worker): a sync task is waited for past its timeout, up to
    ``deadline``, where TaskStuck is raised (see ``_run_sync_to_its_end``).
    ``handoff`` (in-process runs): timed-out and cancelled lines say what becomes of the work.
    """
    fields = task_fields(task, backend)
    time_left = _time_left(task, deadline)
    if time_left is not None and time_left <= 0:
        note = {"handoff": handoff.note(task, started=False)} if handoff is not None else {}
        log.error("task.timed_out", **fields, started=False, error="deadline reached before the task started", **note)
        return "failed"

    log.info("task.started", **fields)
    if finish_sync and not task.is_async:
        return await _run_sync_to_its_end(task, fields, deadline)
    started = time.perf_counter()

    def elapsed_ms() -> float:
        return round((time.perf_counter() - started) * 1000, 3)

    # asyncio.timeout(None) costs as much as a real limit; most tasks have none.
    limit = asyncio.timeout(time_left) if time_left is not None else contextlib.nullcontext()
    try:
        async with limit:
            await _call(task)
    except TimeoutError:
        by_deadline = handoff is not None and time_left != task.timeout
        note = {"handoff": handoff.note(task, started=True, reason=DEADLINE)} if by_deadline and handoff else {}
        log.error("task.timed_out", **fields, started=True, duration_ms=elapsed_ms(), timeout_s=time_left, **note)
        return "failed"
    except asyncio.CancelledError:
        note = {"handoff": handoff.note(task, started=True)} if handoff is not None else {}
        log.error("task.cancelled", **fields, started=True, duration_ms=elapsed_ms(), **note)
        raise
    except Exception as exc:
        return _failed(fields, exc, duration_ms=elapsed_ms())
    log.info("task.succeeded", **fields, duration_ms=elapsed_ms())
    return "succeeded"


async def run_tasks(tasks: Sequence[QueuedTask], backend: str, deadline: float | None = None) -> int:
    """Run ``tasks`` in order; returns how many succeeded.

    A registered task that would not finish in the time left (deadline, shutdown grace) is
    handed to the durable queue instead (``shared.background.handoff``). If the whole run is
    cancelled (shutdown grace exceeded), the tasks that never got to start are handed off or
    logged as cancelled, so none disappears without a trace.
    """
    handoff = handoffs.current()
    succeeded = 0
    for index, task in enumerate(tasks):
        running: QueuedTask | None = None
        refused: Decision | None = None
        try:
            decision = handoff.wants(task, deadline) if handoff.enabled else None
            if decision is None:
                running = task
                succeeded += await run_task(task, backend, deadline, handoff)
            elif not await handoff.move(task, backend, decision):
                refused = decision  # the queue did not take it: run it here as far as it can
                if await run_task(task, backend, deadline):
                    succeeded += 1
                else:
                    handoff.lost(task, backend, refused)
        except asyncio.CancelledError:
            if refused is not None:
                handoff.lost(task, backend, refused)
            handoff.cut(tasks[index + 1 :], running, backend)
            raise
    return succeeded
