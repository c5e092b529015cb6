"""The template's side of the Lambda and slow-task runs: ``create_app`` + ``make_handler``.

The same endpoint and task as ``bench.baselines.bare_app``; only the wiring differs.
"""

from __future__ import annotations

import asyncio
import os

from fastapi import BackgroundTasks
from pydantic import EmailStr

from shared.app import create_app
from shared.background import task
from shared.lambda_handler import make_handler
from shared.tasks.notifications import write_notification

TASK_SECONDS = float(os.environ.get("BENCH_TASK_MS", "0")) / 1000
ASYNC_TASK = TASK_SECONDS > 0 or os.environ.get("BENCH_TASK_KIND") == "async"

app = create_app("bench")


@task("bench.notify_slowly")
async def notify_slowly(email: str, message: str = "") -> None:
    await asyncio.sleep(TASK_SECONDS)
    write_notification(email, message)


@app.post("/send-notification/{email}")
async def send_notification(email: EmailStr, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(notify_slowly if ASYNC_TASK else write_notification, email, message="some notification")
    return {"message": "Notification sent in the background"}


handler = make_handler(app)
