"""A function with slow tasks, for shutdown tests: each task sleeps, then appends a line."""

from __future__ import annotations

import asyncio

from fastapi import BackgroundTasks

from shared.app import create_app
from shared.tasks import notification_log

app = create_app("slow")


async def slow_write(tag: str, seconds: float) -> None:
    await asyncio.sleep(seconds)
    notification_log.append(f"{tag}\n")


@app.post("/slow/{name}")
async def slow(name: str, background_tasks: BackgroundTasks, tasks: int = 1, seconds: float = 1.0) -> dict[str, int]:
    for index in range(tasks):
        background_tasks.add_task(slow_write, f"{name}-{index}", seconds)
    return {"queued": tasks}
