"""The background-task layer: FastAPI's ``BackgroundTasks``, run safely everywhere.

An app opts in with one call, ``install(app)`` (``shared.app.create_app`` does it).
Endpoints keep calling ``background_tasks.add_task(func, *args, **kwargs)``.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from shared.background.backends import Backend, InlineBackend, TaskRejected
from shared.background.executor import TaskExecutor
from shared.background.registry import task
from shared.background.routing import TaskRoute
from shared.settings import Settings, get_settings, running_on_lambda

__all__ = ["Backend", "TaskExecutor", "TaskRejected", "TaskRoute", "install", "local_backend", "task"]


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
    if settings.durable_tasks.strip():
        # Imported only when used: boto3 would lengthen every other function's cold start.
        from shared.background.sqs import route_durable_tasks

        route_durable_tasks(executor, settings)
    return executor


async def _task_rejected(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        status_code=500,
        content={"detail": f"background task rejected: {exc}"},
    )


def install(app: FastAPI, executor: TaskExecutor | None = None) -> TaskExecutor:
    """Run every background task of ``app`` through the task layer.

    Call it before declaring routes (routers: ``APIRouter(route_class=TaskRoute)``);
    routes declared earlier would bypass the layer, so they are refused loudly.
    """
    unmanaged = [route.path for route in app.routes if isinstance(route, APIRoute) and not isinstance(route, TaskRoute)]
    if unmanaged:
        raise RuntimeError(f"install() must come before these routes are declared: {unmanaged}")
    executor = executor or build_executor()
    app.router.route_class = TaskRoute
    app.state.task_executor = executor
    app.add_exception_handler(TaskRejected, _task_rejected)
    return executor
