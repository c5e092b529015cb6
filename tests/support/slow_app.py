"""A function with slow tasks, for shutdown tests: each task sleeps, then appends a line."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import BackgroundTasks
from fastapi.responses import StreamingResponse

from shared.app import create_app
from shared.background import task
from shared.tasks import notification_log

app = create_app("slow")


async def slow_write(tag: str, seconds: float) -> None:
    await asyncio.sleep(seconds)
    notification_log.append(f"{tag}\n")


@task("slow.blocking_write", timeout=0.5)
def blocking_write(tag: str, seconds: float, gate: str = "") -> None:
    """A sync task declaring 0.5 s: it sleeps ``seconds`` (or until the file ``gate`` exists), then appends."""
    if gate:
        while not Path(gate).exists():
            time.sleep(0.01)
    time.sleep(seconds)
    notification_log.append(f"{tag}\n")


@app.post("/blocking/{name}")
async def blocking(
    name: str, background_tasks: BackgroundTasks, seconds: float = 2.0, gate: str = ""
) -> dict[str, int]:
    """The sync task, then a quick async one."""
    background_tasks.add_task(blocking_write, f"{name}-0", seconds, gate)
    background_tasks.add_task(slow_write, f"{name}-1", 0.0)
    return {"queued": 2}


@app.post("/slow/{name}")
async def slow(name: str, background_tasks: BackgroundTasks, tasks: int = 1, seconds: float = 1.0) -> dict[str, int]:
    for index in range(tasks):
        background_tasks.add_task(slow_write, f"{name}-{index}", seconds)
    return {"queued": tasks}


@app.post("/sleep")
async def sleep(seconds: float = 30.0) -> dict[str, float]:
    """A handler still running at shutdown: it notes that it started, then sleeps."""
    notification_log.append("sleeping\n")
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@app.get("/stream")
async def stream() -> StreamingResponse:
    """A response streamed for as long as the client reads: a shutdown cuts it mid-body."""

    async def chunks() -> AsyncIterator[bytes]:
        notification_log.append("streaming\n")
        while True:
            yield b"tick\n"
            await asyncio.sleep(0.05)

    return StreamingResponse(chunks(), media_type="text/plain")
