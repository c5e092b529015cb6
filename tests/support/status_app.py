"""A function that queues tracked tasks, for tests/test_task_status.py (and the worker: TASK_MODULES)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import BackgroundTasks, Request

from shared.app import create_app
from shared.background import task
from shared.lambda_handler import make_handler
from shared.task_status import track

SECRET = "s3cr3t-argument-value"
"""An argument every task is given: it must appear in no status record."""


@task("tests.status.echo", tracked=True)
def echo(secret: str, email: str) -> dict[str, Any]:
    return {"email": email, "length": len(secret)}


@task("tests.status.explode", tracked=True)
async def explode(secret: str, email: str) -> None:
    raise ValueError(f"cannot reach {email}")


@task("tests.status.registered")
def registered(secret: str, email: str) -> str:
    return "registered but not declared tracked"


@task("tests.status.big", tracked=True)
def big(secret: str, email: str) -> str:
    return "x" * 10_000


@task("tests.status.odd", tracked=True)
def odd(secret: str, email: str) -> set[int]:
    return {1, 2}


def plain(secret: str, email: str) -> None:
    """Not registered: never tracked, even with TRACK_TASKS."""


KINDS: dict[str, Any] = {
    "echo": echo,
    "explode": explode,
    "registered": registered,
    "big": big,
    "odd": odd,
    "plain": plain,
}
Kind = Literal["echo", "explode", "registered", "big", "odd", "plain"]

app = create_app("tracking", track_tasks=True)


@app.post("/run")
async def run(kinds: str, background_tasks: BackgroundTasks, email: str = "jane.doe@example.com") -> dict[str, str]:
    """Queue one task of each comma-separated kind."""
    for kind in kinds.split(","):
        background_tasks.add_task(KINDS[kind], SECRET, email)
    return {"queued": kinds}


@app.post("/tracked")
async def tracked(request: Request, background_tasks: BackgroundTasks) -> dict[str, str]:
    """An unregistered function tracked by ``track``: its status URL in the body."""
    return {"task_url": track(request, background_tasks, plain, SECRET, "x@example.com")}


handler = make_handler(app)  # tests/test_task_status.py runs it under the Runtime API emulator
