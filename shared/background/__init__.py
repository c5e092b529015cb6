"""The background-task layer: FastAPI's ``BackgroundTasks``, run safely everywhere.

An app opts in with one call, ``shared.background.install.install(app)``
(``shared.app.create_app`` does it). Endpoints keep calling
``background_tasks.add_task(func, *args, **kwargs)``. Only ``install`` and ``routing``
import FastAPI: the SQS worker runs tasks through this package without it.
"""

from __future__ import annotations

from shared.background import handoff
from shared.background.backends import Backend, InlineBackend, TaskRejected
from shared.background.executor import TaskExecutor
from shared.background.registry import task
from shared.background.runner import PermanentTaskError
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
        from shared.background.lambda_extension import LambdaExtensionBackend

        return LambdaExtensionBackend.get()
    return InlineBackend()


def build_executor(settings: Settings | None = None) -> TaskExecutor:
    settings = settings or get_settings()
    executor = TaskExecutor(local_backend(settings), default_timeout=settings.task_timeout_seconds)
    handoff.configure(settings)
    if settings.durable_tasks.strip():
        # Imported only when used: boto3 would lengthen every other function's cold start.
        from shared.background.sqs import route_durable_tasks

        route_durable_tasks(executor, settings)
    return executor
