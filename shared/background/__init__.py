"""The background-task layer: FastAPI's ``BackgroundTasks``, run safely everywhere.

An app opts in with one call, ``shared.background.install.install(app)``
(``shared.app.create_app`` does it). Endpoints keep calling
``background_tasks.add_task(func, *args, **kwargs)``. Only ``install`` and ``routing``
import FastAPI: the SQS worker runs tasks through this package without it.

The layers, low to high (``make lint`` checks them): the task, its events, errors and
protocols; the lifecycle (every task's acceptance and single end); the handoff policy and the
runner; the backends (``inline``, ``lambda_extension``, ``sqs``) and the executor; this
module's wiring, and FastAPI's routing on top.
"""

from __future__ import annotations

from shared.background import handoff
from shared.background.errors import PermanentTaskError, TaskRejected
from shared.background.executor import TaskExecutor
from shared.background.inline import InlineBackend
from shared.background.protocols import Backend, Sender
from shared.background.registry import task
from shared.settings import Settings, get_settings, running_on_lambda

__all__ = [
    "Backend",
    "PermanentTaskError",
    "TaskExecutor",
    "TaskRejected",
    "build_executor",
    "local_backend",
    "task",
]


def local_backend(settings: Settings) -> Backend:
    """The backend for in-process tasks: after the response here, or on Lambda."""
    choice = settings.task_backend
    if choice == "auto":
        choice = "lambda-extension" if running_on_lambda() else "inline"
    if choice == "lambda-extension":
        from shared.background.lambda_extension import LambdaExtensionBackend  # only on Lambda: cold start

        return LambdaExtensionBackend.get()
    return InlineBackend()


def build_executor(settings: Settings | None = None) -> TaskExecutor:
    settings = settings or get_settings()
    executor = TaskExecutor(
        local_backend(settings), default_timeout=settings.task_timeout_seconds, track_registered=settings.track_tasks
    )

    def sender() -> Sender:
        from shared.background.sqs import SqsBackend  # boto3 only when a task is handed off: cold start

        return SqsBackend.from_settings(settings)

    handoff.configure(settings, sender)
    if settings.durable_tasks.strip():
        route_durable_tasks(executor, settings)
    return executor


def route_durable_tasks(executor: TaskExecutor, settings: Settings) -> Backend | None:
    """Send the tasks named in ``DURABLE_TASKS`` to ``TASK_QUEUE_URL``, if both are set."""
    # Imported only when used: boto3 would lengthen every other function's cold start.
    from shared.background.sqs import SqsBackend, check_durable_task_names, durable_task_names, log

    names = durable_task_names(settings)
    if not names:
        return None
    check_durable_task_names(names, settings.task_modules)
    if not settings.task_queue_url:
        log.warning(
            "durable_tasks.not_configured",
            durable_tasks=names,
            consequence="TASK_QUEUE_URL is not set: these tasks run in-process and die with it",
        )
        return None
    defer = getattr(executor.default, "defer", None)  # on Lambda: send after the response, before the freeze
    backend = SqsBackend.from_settings(settings, defer=defer)
    executor.route(names, backend)
    return backend
