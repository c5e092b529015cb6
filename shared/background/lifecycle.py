"""The one place a task is accepted and ended: every terminal ``task.*`` line is logged here.

A task opens when it is accepted (``accept``: ``task.queued``, before the response) or when a
worker starts a receive of it (``open``). Each path that finishes it (the runner, the handoff,
the SQS sender, the worker) calls ``end`` with its terminal event (``events.TERMINAL``); a task
ends once: a second end is not logged as a terminal event but as ``task.end_repeated``, a bug
made visible. Whatever is still open when the process exits (normal exit, SIGTERM, SIGINT,
``sys.exit``, ``exit_process`` from a watchdog) is logged ``task.lost`` with its ids and the
reason, from ``atexit``. Only a process killed outright (``kill -9``, out of memory) ends
without that line.

A **tracked** task's steps (accepted, started, ended) are also told to the ``TaskObserver``
set with ``observe`` (the status store); an untracked task costs one dictionary lookup per step.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NoReturn

from shared.background import running
from shared.background.events import ACCEPTED, TERMINAL
from shared.background.protocols import TaskObserver
from shared.background.task import QueuedTask
from shared.logs import bound, flush_logs, get_logger, mask_emails
from shared.settings import get_settings

log = get_logger("shared.background")

_REMEMBERED_ENDS = 10_000
"""How many ended task ids are kept to recognise a second end (a bounded memory)."""

_open: dict[str, tuple[dict[str, Any], float]] = {}
_ended: OrderedDict[str, str] = OrderedDict()
_ended_lock = threading.Lock()
_after_lost: list[Callable[[], None]] = []
_tracked: dict[str, bool] = {}
"""Tracked tasks open here: task id → whether this is a worker's receive of it (``open``)."""
_ended_tracked: OrderedDict[str, bool] = OrderedDict()
"""Tracked tasks that ended here lately: the worker dead-letters a task after its attempt's end."""
_observer: list[TaskObserver] = []
_unrecorded: set[str] = set()
"""Tracked task names queued while no observer was set: each is warned about once."""


def observe(observer: TaskObserver | None) -> None:
    """Tell ``observer`` the steps of every tracked task from now on (None: no one)."""
    _observer[:] = [] if observer is None else [observer]


def task_fields(task: QueuedTask, backend: str) -> dict[str, Any]:
    """The keys every line about ``task`` carries."""
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


def accept(task: QueuedTask, backend: str) -> None:
    """``task`` is accepted (before the response): it must now end in exactly one terminal event."""
    fields = task_fields(task, backend)
    opened = _with_request_id(fields)
    _open[task.task_id] = (opened, time.monotonic())
    log.info(ACCEPTED, **fields)
    if task.tracked:
        if _observer:
            _tracked[task.task_id] = False
            _observer[0].accepted(opened)
        elif task.name not in _unrecorded:
            _unrecorded.add(task.name)
            log.warning(
                "tracking.not_recorded",
                task=task.name,
                error="this task is tracked but this process records no task status: "
                "create_app(..., track_tasks=True) or set TRACK_TASKS=true (docs/task-status.md)",
            )


def open(fields: dict[str, Any], *, tracked: bool = False) -> None:
    """A run of the task ``fields`` names begins here without a ``task.queued`` of this process: a
    worker's receive (each receive of a message is a run of its own, with its own end)."""
    _open[fields["task_id"]] = (_with_request_id(fields), time.monotonic())
    if tracked and _observer:
        _tracked[fields["task_id"]] = True


def started(fields: dict[str, Any]) -> None:
    """A run of the task ``fields`` names starts (logged ``task.started`` by the caller)."""
    on_worker = _tracked.get(fields["task_id"])
    if on_worker is not None and _observer:
        _observer[0].started(_with_request_id(fields), on_worker=on_worker)


def dead_lettered(fields: dict[str, Any]) -> None:
    """The worker's last allowed receive of the task ended (logged ``task.dead_lettered`` by the worker)."""
    task_id = fields.get("task_id")
    if _observer and (task_id in _tracked or task_id in _ended_tracked):
        _observer[0].ended("task.dead_lettered", _with_request_id(fields), {}, on_worker=True)


def _tell_end(event: str, fields: dict[str, Any], extra: dict[str, Any]) -> None:
    task_id = fields["task_id"]
    on_worker = _tracked.pop(task_id, False)
    with _ended_lock:
        _ended_tracked[task_id] = on_worker
        if len(_ended_tracked) > _REMEMBERED_ENDS:
            _ended_tracked.popitem(last=False)
    if _observer:
        _observer[0].ended(event, _with_request_id(fields), extra, on_worker=on_worker)


def _with_request_id(fields: dict[str, Any]) -> dict[str, Any]:
    request_id = bound("request_id")
    return fields if request_id is None else {**fields, "request_id": request_id}


def is_open(task_id: str) -> bool:
    return task_id in _open


def end(event: str, fields: dict[str, Any], *, level: str = "info", **extra: Any) -> bool:
    """Log ``event``, the end of the task ``fields`` names; False (and no terminal line) if it had ended.

    A task this process never opened (a test calling the runner directly) is ended as given.
    """
    if event not in TERMINAL:
        raise ValueError(f"{event!r} is not a terminal task event (shared.background.events.TERMINAL)")
    task_id = fields["task_id"]
    running.forget(task_id)
    if _open.pop(task_id, None) is None:
        with _ended_lock:
            first = _ended.get(task_id)
        if first is not None:
            log.error("task.end_repeated", **fields, first_end=first, repeated=event)
            return False
    with _ended_lock:
        _ended[task_id] = event
        if len(_ended) > _REMEMBERED_ENDS:
            _ended.popitem(last=False)
    getattr(log, level)(event, **fields, **extra)
    if task_id in _tracked:
        _tell_end(event, fields, extra)
    return True


def still_open() -> list[dict[str, Any]]:
    """The fields of every accepted task that has not ended yet."""
    return [fields for fields, _ in list(_open.values())]


def after_lost_at_exit(hook: Callable[[], None]) -> None:
    """Run ``hook`` at exit once the lost tasks are logged (flush the metrics that count them)."""
    if hook not in _after_lost:
        _after_lost.append(hook)


def log_lost(reason: str) -> int:
    """Log ``task.lost`` for every task still open; how many. The last line of defence."""
    lost = 0
    now = time.monotonic()
    for task_id, (fields, opened) in list(_open.items()):
        if _open.pop(task_id, None) is None:
            continue
        running.forget(task_id)
        lost += 1
        with _ended_lock:
            _ended[task_id] = "task.lost"
        log.error(
            "task.lost",
            **fields,
            reason=reason,
            open_s=round(now - opened, 3),
            error="the process is exiting and this task had not ended",
        )
        if task_id in _tracked:
            _tell_end("task.lost", fields, {"reason": reason})
    return lost


def exit_process(code: int, reason: str) -> NoReturn:
    """End the process now (a thread cannot be stopped otherwise), after logging what it loses."""
    _at_exit(f"exit {code}: {reason}")
    flush_logs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _at_exit(reason: str = "the process exited") -> None:
    try:
        log_lost(reason)
    except (OSError, ValueError):  # the log stream is already closed: nothing left to tell
        pass
    finally:
        for hook in _after_lost:
            hook()


def reset() -> None:
    """Forget every open and ended task: for tests, which run many apps in one process."""
    _open.clear()
    _unrecorded.clear()
    _tracked.clear()
    running.reset()
    with _ended_lock:
        _ended.clear()
        _ended_tracked.clear()


atexit.register(_at_exit)
