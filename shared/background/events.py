"""The task lifecycle's vocabulary: which ``task.*`` event accepts a task, which ends it.

Low and import-free: the lifecycle, the metrics, the worker and the log checker
(``infra.lifecycle_check``) all read these sets, so a new event is named in one place.

A task is **accepted** by ``task.queued`` (the API process, before the response). In the
process that accepted it, it then ends in exactly one of ``ENDS_HERE`` or ``MOVES_TO_QUEUE``.
A task that moved to the queue is run by the worker: each receive is one attempt that ends
in one of ``WORKER_ATTEMPT_ENDS`` (the message comes back) or ``WORKER_FINAL`` (it never does).
Every terminal line carries the ``task_id`` (and ``request_id`` where the request is known).
"""

from __future__ import annotations

from typing import Final

ACCEPTED: Final = "task.queued"

STARTED: Final = "task.started"
"""A run begins (DEBUG: at INFO its start time and wait are on the terminal line instead)."""

RUNNING: Final = "task.running"
"""A run still going ``TASK_RUNNING_NOTICE_SECONDS`` after its start (once per run; not an end)."""

ENDS_HERE: Final = frozenset(
    {
        "task.succeeded",
        "task.failed",
        "task.timed_out",
        "task.cancelled",
        "task.rejected",
        "task.lost",
    }
)
"""In the accepting process: the task ran (or was refused, or is known lost) here, and that is its end."""

MOVES_TO_QUEUE: Final = frozenset({"task.handed_off", "task.enqueued"})
"""In the accepting process: the queue took the task; the worker owns it from now on."""

WORKER_FINAL: Final = frozenset(
    {
        "task.succeeded",
        "task.dead_lettered",
        "task.duplicate",
        "task.rejected",
    }
)
"""On the worker: the message is done with (``task.failed`` with ``permanent: true`` is final too)."""

WORKER_ATTEMPT_ENDS: Final = frozenset(
    {
        "task.failed",
        "task.timed_out",
        "task.cancelled",
        "task.in_progress_elsewhere",
        "task.worker_error",
    }
)
"""On the worker: this receive ended without finishing the task (``task.cancelled``: the worker stopped
at the end of its grace); SQS delivers it again."""

TERMINAL: Final = ENDS_HERE | MOVES_TO_QUEUE | WORKER_FINAL | WORKER_ATTEMPT_ENDS
