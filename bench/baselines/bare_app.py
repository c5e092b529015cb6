"""The tutorial's endpoint in plain FastAPI: plain ``BackgroundTasks``, no task layer.

Served by plain uvicorn for the container runs and wrapped in plain Mangum for the
Lambda runs. The task is the tutorial's ``def write_notification``; with ``BENCH_TASK_MS`` set it is
an ``async def`` that first waits that long (``asyncio.sleep``, as an e-mail or API call
would); with ``BENCH_TASK_KIND=async`` the same ``async def`` without the wait (no thread
pool hand-over). ``bench.template_app`` has the same endpoint and tasks.
"""

from __future__ import annotations

import asyncio
import os

from fastapi import BackgroundTasks, FastAPI
from mangum import Mangum
from pydantic import EmailStr

TASK_SECONDS = float(os.environ.get("BENCH_TASK_MS", "0")) / 1000
ASYNC_TASK = TASK_SECONDS > 0 or os.environ.get("BENCH_TASK_KIND") == "async"
LOG_PATH = os.environ.get("NOTIFICATION_LOG_PATH", "log.txt")

app = FastAPI()


def write_notification(email: str, message: str = "") -> None:
    """The tutorial's task: a plain ``def``, so Starlette runs it in the thread pool."""
    with open(LOG_PATH, mode="a") as email_file:
        email_file.write(f"notification for {email}: {message}\n")


async def notify_slowly(email: str, message: str = "") -> None:
    await asyncio.sleep(TASK_SECONDS)
    write_notification(email, message)


@app.post("/send-notification/{email}")
async def send_notification(email: EmailStr, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(notify_slowly if ASYNC_TASK else write_notification, email, message="some notification")
    return {"message": "Notification sent in the background"}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


handler = Mangum(app, lifespan="off")
