"""A function queueing the tasks of ``handoff_tasks``: ``POST /tasks/{kind}`` adds ``count`` of them."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import BackgroundTasks

from bench import handoff_tasks
from shared.app import create_app
from shared.lambda_handler import make_handler

app = create_app("handoff-test")

KINDS: dict[str, Any] = {
    "work": handoff_tasks.work,
    "plain": handoff_tasks.plain,
    "resumable": handoff_tasks.resumable,
    "fragile": handoff_tasks.fragile,
    "slow": handoff_tasks.slow,
}


@app.post("/tasks/{kind}")
async def add_tasks(
    kind: Literal["work", "plain", "resumable", "fragile", "slow"],
    path: str,
    label: str,
    background_tasks: BackgroundTasks,
    count: int = 1,
    seconds: float = 0.5,
    gate: str = "",
) -> dict[str, int]:
    for index in range(count):
        extra = gate if kind in ("resumable", "fragile") else seconds
        background_tasks.add_task(KINDS[kind], path, f"{label}-{index}", extra)
    return {"queued": count}


handler = make_handler(app)
