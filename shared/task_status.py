"""Task status over HTTP: ``GET /<function>/tasks/{task_id}``, the ``Link`` header, ``track``.

A response that queued tracked tasks carries one ``Link: <status URL>; rel="monitor"`` per task
(RFC 8288 links; ``monitor`` is RFC 5989's relation for "a resource to follow the status of
this one", as RFC 8631 uses it). Their queued records are written in one batch before the
response starts, so a client that follows a link at once never gets a 404. ``track`` queues a
task like ``add_task`` and returns its status URL, for an endpoint to put in its body.
See docs/task-status.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import BackgroundTasks, FastAPI, HTTPException, Path, Request, status
from pydantic import BaseModel, ConfigDict
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.background import status_store
from shared.background.status_store import StatusRecorder, StatusStore, pending_records
from shared.background.task import TASK_ID_ATTRIBUTE
from shared.http_errors import error_responses
from shared.ids import new_id
from shared.settings import Settings
from shared.validation import ID_PATTERN

ROUTE_NAME = "task_status"
LINK_RELATION = "monitor"

State = Literal[
    "queued",
    "enqueued",
    "handed_off",
    "running",
    "retrying",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "rejected",
    "lost",
    "dead_lettered",
]


# Built at the first status request (or OpenAPI document), not at the function's cold start.
_DEFERRED = ConfigDict(defer_build=True)


class TaskError(BaseModel):
    model_config = _DEFERRED

    type: str | None
    """The exception's class name; None when the task ended without one (a timeout, a loss)."""
    message: str
    """Masked like the logs (e-mail addresses)."""


class TaskStatus(BaseModel):
    model_config = _DEFERRED

    task_id: str
    task: str
    state: State
    done: bool
    attempt: int
    backend: str
    request_id: str | None = None
    invocation: str | None = None
    queued_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    updated_at: str
    error: TaskError | None = None
    error_note: str | None = None
    result: Any = None
    result_refused: str | None = None


def status_url(request: Request, task_id: str) -> str:
    return str(request.url_for(ROUTE_NAME, task_id=task_id))


def track(
    request: Request, background_tasks: BackgroundTasks, func: Callable[..., Any], *args: Any, **kwargs: Any
) -> str:
    """``background_tasks.add_task(func, *args, **kwargs)``, tracked; returns the task's status URL."""
    task_id = new_id()
    background_tasks.add_task(func, *args, **kwargs)
    setattr(background_tasks.tasks[-1], TASK_ID_ATTRIBUTE, task_id)
    return status_url(request, task_id)


class TaskStatusMiddleware:
    """Writes a request's queued records in one batch as its response starts, and adds their ``Link``s."""

    def __init__(self, app: ASGIApp, recorder: StatusRecorder) -> None:
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with pending_records() as records:

            async def send_links(message: Message) -> None:
                if message["type"] == "http.response.start" and records:
                    batch = records[:]
                    records.clear()
                    await anyio.to_thread.run_sync(self.recorder.write_queued, batch)
                    request = Request(scope)
                    headers = MutableHeaders(scope=message)
                    for record in batch:
                        url = status_url(request, record["task_id"])
                        headers.append("Link", f'<{url}>; rel="{LINK_RELATION}"')
                await send(message)

            try:
                await self.app(scope, receive, send_links)
            finally:
                if records:  # queued, but no response started (the client left): written all the same
                    await anyio.to_thread.run_sync(self.recorder.write_queued, records[:])


def install(app: FastAPI, settings: Settings) -> None:
    """The status route and the middleware on ``app``; this process records tracked tasks."""
    recorder = status_store.install(settings)
    store = recorder.store
    app.add_middleware(TaskStatusMiddleware, recorder=recorder)

    async def task_status(
        task_id: Annotated[str, Path(pattern=ID_PATTERN, description="32 lower-case hex digits.")],
    ) -> TaskStatus:
        """The status of a tracked task: ``done`` once ``state`` is final; 404 for an id this API never gave."""
        record = await anyio.to_thread.run_sync(store.get, task_id)
        if record is None or int(record.get("expires_at", 0)) < time.time():
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"Task {task_id} not found.")
        return _status(record)

    app.add_api_route(
        "/tasks/{task_id}",
        task_status,
        methods=["GET"],
        name=ROUTE_NAME,
        tags=["tasks"],
        responses=error_responses(404),
    )


def _status(record: dict[str, Any]) -> TaskStatus:
    shown = {key: value for key, value in record.items() if key not in ("seq", "expires_at")}
    if "result" in shown:
        shown["result"] = json.loads(shown["result"])
    return TaskStatus.model_validate(shown)


__all__ = ["StatusStore", "TaskStatus", "TaskStatusMiddleware", "install", "status_url", "track"]
