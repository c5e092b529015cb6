"""Run tasks one by one, each isolated, each logged from start to end.

A task that raises, times out or is cancelled is logged with its exception and the
next task still runs: plain Starlette would skip every task after the first failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Sequence
from typing import Any

import anyio.to_thread

from shared.background import handoff as handoffs
from shared.background.handoff import DEADLINE, Decision, Handoff
from shared.background.task import QueuedTask
from shared.logs import get_logger, mask_emails
from shared.settings import get_settings

log = get_logger("shared.background")


class TaskTimeout(Exception):
    """A task ran past its own timeout or the invocation deadline."""


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


async def run_task(
    task: QueuedTask, backend: str, deadline: float | None = None, handoff: Handoff | None = None
) -> bool:
    """Run one task; True when it succeeded. Never raises, except to pass on cancellation.

    ``handoff`` (in-process runs): timed-out and cancelled lines say what becomes of the work.
    """
    fields = task_fields(task, backend)
    time_left = _time_left(task, deadline)
    if time_left is not None and time_left <= 0:
        note = {"handoff": handoff.note(task, started=False)} if handoff is not None else {}
        log.error("task.timed_out", **fields, started=False, error="deadline reached before the task started", **note)
        return False

    log.info("task.started", **fields)
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
        return False
    except asyncio.CancelledError:
        note = {"handoff": handoff.note(task, started=True)} if handoff is not None else {}
        log.error("task.cancelled", **fields, duration_ms=elapsed_ms(), **note)
        raise
    except Exception as exc:
        log.error("task.failed", **fields, duration_ms=elapsed_ms(), exc_info=exc)
        return False
    log.info("task.succeeded", **fields, duration_ms=elapsed_ms())
    return True


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
