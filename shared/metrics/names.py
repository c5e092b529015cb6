"""Every metric name, label and unit, in one place: the code, template.yaml and its test use these.

Counters are named after the task events that move them (``task.failed`` → ``tasks_failed``),
with the log keys ``service``, ``task`` and ``backend`` as dimensions (CloudWatch) or labels
(Prometheus, which appends ``_total`` to counters). The duration is in milliseconds in
CloudWatch (``task_duration``, unit ``Milliseconds``) and in seconds in Prometheus
(``task_duration_seconds``), each system's convention.
"""

from __future__ import annotations

from typing import Final

DEFAULT_NAMESPACE: Final = "FastAPIBackgroundTasks"
"""CloudWatch namespace when ``POWERTOOLS_METRICS_NAMESPACE`` is not set (template.yaml sets the stack name)."""

DIMENSIONS: Final = ("service", "task", "backend")
"""The log keys every task metric is split by."""

DIMENSION_SETS: Final = (DIMENSIONS, ("service",), ())
"""CloudWatch: per task, per function, and over the whole namespace (what the alarms use)."""

COUNTERS: Final = {
    "task.queued": "tasks_queued",
    "task.started": "tasks_started",
    "task.running": "tasks_long_running",
    "task.succeeded": "tasks_succeeded",
    "task.failed": "tasks_failed",
    "task.timed_out": "tasks_timed_out",
    "task.cancelled": "tasks_cancelled",
    "task.enqueued": "tasks_enqueued",
    "task.enqueue_failed": "tasks_enqueue_failed",
    "task.handed_off": "tasks_handed_off",
    "task.dead_lettered": "tasks_dead_lettered",
    "task.duplicate": "tasks_duplicate",
    "task.rejected": "tasks_rejected",
    "task.worker_error": "tasks_worker_error",
    "task.in_progress_elsewhere": "tasks_in_progress_elsewhere",
    "task.lost": "tasks_lost",
    "task.handoff_failed": "tasks_handoff_failed",
    "task.overrunning": "tasks_overrunning",
    "task.enqueue_retry": "tasks_enqueue_retried",
    "task.end_repeated": "tasks_end_repeated",
    "task.status_write_failed": "tasks_status_write_failed",
}
"""Task event → counter: every ``task.*`` event the code logs (a test reads the code to check), counted
by the log pipeline's first processor (``shared.metrics.count_task_events``)."""

NOT_COUNTED: Final = {"task.metrics": "the EMF line itself, which carries the counts"}
"""``task.*`` events that are no task's event."""

LOSSES: Final = ("tasks_lost", "tasks_handoff_failed")
"""What the lost-task alarm counts: a task that ended nowhere, or that the queue did not take."""

RETRIED: Final = "tasks_retried"
"""``task.started`` with ``attempt`` > 1: a durable task run again after a failed receive."""

DURATION: Final = "task_duration"
DURATION_UNIT: Final = "Milliseconds"
IN_FLIGHT: Final = "tasks_in_flight"
"""Prometheus only: a gauge needs a live process; on Lambda the queue's own metrics show the backlog."""

TIMED_EVENTS: Final = frozenset({"task.succeeded", "task.failed", "task.timed_out", "task.cancelled"})
"""Events that end a run and carry ``duration_ms``."""

FAILURES: Final = ("tasks_failed", "tasks_timed_out")
"""What the failure-rate alarm counts as failed; it divides by these plus ``tasks_succeeded``."""


def prometheus_name(metric: str) -> str:
    """The name prometheus-client is given (it adds ``_total`` to counters itself)."""
    return f"{metric}_seconds" if metric == DURATION else metric


def cloudwatch_metrics() -> list[str]:
    """Every metric name an EMF line may carry."""
    return [*COUNTERS.values(), RETRIED, DURATION]
