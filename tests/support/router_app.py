"""A function declared the way FastAPI apps usually are: a lifespan, and routes in ``APIRouter``s.

Routers at two depths, one with its own ``route_class``, one route declared after its
router was included. Served by uvicorn (``--app tests.support.router_app:app``), by the
real Lambda runtime client (``tests.support.router_app.handler``) and by ``TestClient``.
Its tasks and its lifespan append lines to the notification log, the side effect the
tests count.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, BackgroundTasks, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from shared.app import create_app
from shared.lambda_handler import make_handler
from shared.tasks import notification_log


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    if os.environ.get("ROUTER_APP_FAIL_STARTUP"):
        raise ConnectionError("the lifespan could not open its client")
    notification_log.append(f"lifespan startup {os.getpid()}\n")
    app.state.client = f"client-{os.getpid()}"
    yield {"opened_by": "lifespan"}
    notification_log.append(f"lifespan shutdown {os.getpid()}\n")


class TimedRoute(APIRoute):
    """A router's own route class, as users write them: its handler must keep working."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def timed(request: Request) -> Response:
            response = await handle(request)
            response.headers["X-Timed"] = "yes"
            return response

        return timed


def fail(label: str) -> None:
    raise ValueError(f"task failed on purpose ({label})")


def record(label: str) -> None:
    notification_log.append(f"record {label}\n")


def record_state(label: str, client: str) -> None:
    notification_log.append(f"state {label} {client}\n")


app = create_app("router-test", lifespan=lifespan)

outer = APIRouter(prefix="/outer")
inner = APIRouter(prefix="/inner", route_class=TimedRoute)


@outer.post("/fail/{label}")
async def outer_fail(label: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(fail, label)
    background_tasks.add_task(record, label)
    return {"queued": label}


@inner.post("/fail/{label}")
def inner_fail(label: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(fail, label)
    background_tasks.add_task(record, label)
    return {"queued": label}


outer.include_router(inner)
app.include_router(outer, prefix="/v1")


@inner.post("/late/{label}")
async def declared_after_include(label: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(fail, label)
    background_tasks.add_task(record, label)
    return {"queued": label}


@app.get("/state/{label}")
async def state(label: str, request: Request, background_tasks: BackgroundTasks) -> dict[str, str]:
    """What the lifespan set, seen by the request and by its task."""
    background_tasks.add_task(record_state, label, request.app.state.client)
    return {"client": request.app.state.client, "opened_by": request.state.opened_by}


handler = make_handler(app)
