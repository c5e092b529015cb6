"""``install(app)``: the task layer in a FastAPI app.

Kept apart from the package's other modules so that code that only runs tasks (the SQS
worker on Lambda) imports no FastAPI: a queue-driven cold start skips the web framework.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from shared.background import TaskExecutor, TaskRejected, build_executor
from shared.background.routing import TaskRoute

__all__ = ["TaskRoute", "install"]


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
