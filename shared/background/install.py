"""``install(app)``: the task layer in a FastAPI app.

Kept apart from the package's other modules so that code that only runs tasks (the SQS
worker on Lambda) imports no FastAPI: a queue-driven cold start skips the web framework.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette._utils import is_async_callable
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.background import TaskExecutor, TaskRejected, build_executor
from shared.background.routing import TaskRoute, UnmanagedRouteError, manage_routes, unmanaged_routes

__all__ = ["TaskRoute", "UnmanagedRouteError", "install"]


async def _task_rejected(request: Request, exc: Exception) -> JSONResponse:
    """A task refused before the response (``task.rejected`` logged): a 4xx when the client's values
    caused it (a non-finite number, unencodable text, too large), else a 500: the code must change."""
    status = exc.status_code if isinstance(exc, TaskRejected) else 500
    return JSONResponse(status_code=status, content={"detail": f"background task rejected: {exc}"})


def _with_task_layer(handler: Callable[..., Any]) -> Callable[..., Any]:
    """An exception handler whose response's background tasks go through the task layer too."""
    if getattr(handler, "runs_tasks_through_the_layer", False):
        return handler

    async def handle(conn: HTTPConnection, exc: Exception) -> Any:
        if is_async_callable(handler):
            response = await handler(conn, exc)
        else:
            response = await run_in_threadpool(handler, conn, exc)
        background = getattr(response, "background", None)
        executor = getattr(conn.app.state, "task_executor", None)
        if background is not None and executor is not None:
            response.background = executor.take(background)
        return response

    handle.runs_tasks_through_the_layer = True  # type: ignore[attr-defined]
    return handle


class _ExceptionHandlers(dict[Any, Callable[..., Any]]):
    """``app.exception_handlers`` whose handlers, those set at install and every one added
    later (``add_exception_handler``, ``@app.exception_handler``), are ``_with_task_layer``."""

    def __init__(self, handlers: Mapping[Any, Callable[..., Any]]) -> None:
        super().__init__()
        for key, handler in handlers.items():
            self[key] = handler

    def __setitem__(self, key: Any, handler: Callable[..., Any]) -> None:
        super().__setitem__(key, _with_task_layer(handler))

    def setdefault(self, key: Any, handler: Callable[..., Any]) -> Callable[..., Any]:
        if key not in self:
            self[key] = handler
        return self[key]


class _Refusing:
    """What an app that cannot take over one of its routes serves: its startup fails, and so
    does every request if nothing ran the lifespan. Raising while the middleware is built
    instead would not do: uvicorn takes that for an app without lifespan support and serves it."""

    def __init__(self, error: UnmanagedRouteError) -> None:
        self.error = error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.failed", "message": str(self.error)})
        raise self.error


def _manage_at_start(app: ASGIApp, fastapi_app: FastAPI) -> ASGIApp:
    """A "middleware" Starlette builds once, when the app starts (lifespan or first request).

    It adds nothing to the request path: it gives every route declared by then (included
    routers at any depth, added after ``install`` or not) the task layer. An app with a
    route it cannot manage refuses to start (``UnmanagedRouteError``, one line naming it).
    """
    try:
        manage_routes(fastapi_app.router.routes)
    except UnmanagedRouteError as error:
        return _Refusing(error)
    return app


def install(app: FastAPI, executor: TaskExecutor | None = None) -> TaskExecutor:
    """Run every background task of ``app`` through the task layer.

    Call it before declaring routes: routes declared earlier are refused loudly. Routes
    declared later, on the app or on any ``APIRouter`` it includes, are taken over when
    the app starts. Responses of exception handlers (a ``BackgroundTask`` on an error
    response) go through the layer too.
    """
    unmanaged = unmanaged_routes(app.router.routes)
    if unmanaged:
        raise RuntimeError(f"install() must come before these routes are declared: {unmanaged}")
    executor = executor or build_executor()
    app.router.route_class = TaskRoute
    app.state.task_executor = executor
    app.exception_handlers = _ExceptionHandlers(app.exception_handlers)
    if TaskRejected not in app.exception_handlers:
        app.add_exception_handler(TaskRejected, _task_rejected)
    app.add_middleware(_manage_at_start, fastapi_app=app)
    return executor
