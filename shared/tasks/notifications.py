"""The tutorial's tasks: notifications and log lines, written to the notification log."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import anyio.to_thread

from shared.background import task
from shared.tasks import notification_log


@task("notifications.write_notification")
def write_notification(email: str, message: str = "") -> None:
    notification_log.append(f"notification for {email}: {message}\n")


@task("notifications.write_log")
def write_log(message: str) -> None:
    notification_log.append(message)


@task("notifications.send_email")
async def send_email(email: str, message: str = "") -> None:
    """Stands in for a mail server; ``shared.tasks.email`` sends real mail through SES."""
    await anyio.to_thread.run_sync(notification_log.append, f"email to {email}: {message}\n")


@task("notifications.process_data")
def process_data(job_id: str, data: dict[str, Any]) -> None:
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    notification_log.append(f"processed {job_id}: {len(data)} keys, sha256 {digest}\n")


@task("notifications.process_data_async")
async def process_data_async(job_id: str, data: dict[str, Any]) -> None:
    await anyio.to_thread.run_sync(process_data, job_id, data)
