"""``install(app)``: the task layer in a FastAPI app.

Kept apart from the package's other modules so that code that only runs tasks (the SQS
worker on Lambda) imports no FastAPI: a queue-driven cold start skips the web framework.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp

from shared.background import TaskExecutor, TaskRejected, build_executor
from shared.background.routing import TaskRoute, UnmanagedRouteError, manage_routes, unmanaged_routes

__all__ = ["TaskRoute", "UnmanagedRouteError", "install"]


async def _task_rejected(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        status_code=500,
        content={"detail": f"background task rejected: {exc}"},
    )


def _manage_at_start(app: ASGIApp, fastapi_app: FastAPI) -> ASGIApp:
    """A "middleware" Starlette builds once, when the app starts (lifespan or first request).

    It adds nothing to the request path: it gives every route declared by then (included
    routers at any depth, added after ``install`` or not) the task layer, and raises
    ``UnmanagedRouteError`` for one it cannot manage, so the app refuses to start.
    """
    manage_routes(fastapi_app.router.routes)
    return app


def install(app: FastAPI, executor: TaskExecutor | None = None) -> TaskExecutor:
    """Run every background task of ``app`` through the task layer.

    Call it before declaring routes: routes declared earlier are refused loudly. Routes
    declared later, on the app or on any ``APIRouter`` it includes, are taken over when
    the app starts.
    """
    unmanaged = unmanaged_routes(app.router.routes)
    if unmanaged:
        raise RuntimeError(f"install() must come before these routes are declared: {unmanaged}")
    executor = executor or build_executor()
    app.router.route_class = TaskRoute
    app.state.task_executor = executor
    if TaskRejected not in app.exception_handlers:
        app.add_exception_handler(TaskRejected, _task_rejected)
    app.add_middleware(_manage_at_start, fastapi_app=app)
    return executor
