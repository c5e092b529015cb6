"""The route class that hands each response's background tasks to the executor."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response


class TaskRoute(APIRoute):
    """An ``APIRoute`` whose response runs its tasks through ``app.state.task_executor``.

    Endpoints keep FastAPI's plain ``BackgroundTasks`` API; only what runs the tasks
    after the response changes.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_with_executor(request: Request) -> Response:
            response = await handle(request)
            executor = getattr(request.app.state, "task_executor", None)
            if response.background is not None and executor is not None:
                response.background = executor.take(response.background)
            return response

        return handle_with_executor
