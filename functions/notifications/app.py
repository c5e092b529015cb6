"""Notifications: every behaviour of FastAPI's background-tasks tutorial."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import BackgroundTasks, Depends, Request, status
from pydantic import BaseModel, Field, StrictBool
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse

from shared.app import create_app
from shared.ids import new_id
from shared.lambda_handler import make_handler
from shared.tasks.notifications import (
    process_data,
    process_data_async,
    send_email,
    write_log,
    write_notification,
)
from shared.validation import Email

app = create_app("notifications")


@app.post("/send-notification/{email}")
async def send_notification(email: Email, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(write_notification, email, message="some notification")
    return {"message": "Notification sent in the background"}


def get_query(background_tasks: BackgroundTasks, q: str | None = None) -> str | None:
    if q:
        background_tasks.add_task(write_log, f"found query: {q}\n")
    return q


@app.post("/send-message/{email}")
async def send_message(
    email: Email, background_tasks: BackgroundTasks, q: Annotated[str | None, Depends(get_query)]
) -> dict[str, str]:
    background_tasks.add_task(write_log, f"message to {email}\n")
    return {"message": "Message sent"}


def log_client(request: Request, background_tasks: BackgroundTasks) -> str:
    client = request.headers.get("user-agent", "unknown")
    background_tasks.add_task(write_log, f"client: {client}\n")
    return client


def get_audited_query(
    background_tasks: BackgroundTasks, client: Annotated[str, Depends(log_client)], q: str | None = None
) -> str | None:
    if q:
        background_tasks.add_task(write_log, f"found query: {q} (from {client})\n")
    return q


@app.post("/send-audited-message/{email}")
async def send_audited_message(
    email: Email, background_tasks: BackgroundTasks, q: Annotated[str | None, Depends(get_audited_query)]
) -> dict[str, str]:
    """A task added by a sub-dependency (log_client), a dependency and the operation, in that order."""
    background_tasks.add_task(write_log, f"message to {email}\n")
    return {"message": "Message sent"}


@app.post("/send-welcome/{email}")
async def send_welcome(email: Email, background_tasks: BackgroundTasks) -> dict[str, str]:
    """Several tasks in one request: an ``async def`` e-mail, then a sync log line."""
    background_tasks.add_task(send_email, email, message="Thank you for using our service")
    background_tasks.add_task(write_log, f"Email sent to {email}\n")
    return {"message": "Message sent"}


@app.post("/unsubscribe/{email}")
async def unsubscribe(email: Email) -> JSONResponse:
    """A plain Starlette response carrying a single ``BackgroundTask``."""
    return JSONResponse({"message": "Unsubscribed"}, background=BackgroundTask(write_log, f"unsubscribed {email}\n"))


class ProcessRequest(BaseModel):
    data: dict[str, Any] = Field(description="Any JSON object to process.")
    run_async: StrictBool = Field(False, description="Process with the async def task instead of the def one.")


class ProcessAccepted(BaseModel):
    status: str
    job_id: str


# A body that is not UTF-8 is a 400 (FastAPI), one over create_app's default cap a 413;
# documented without importing shared.http_errors (botocore).
_DETAIL = {"application/json": {"schema": {"properties": {"detail": {"type": "string"}}, "type": "object"}}}
MALFORMED_BODY: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed request body", "content": _DETAIL},
    413: {"description": "Content too large", "content": _DETAIL},
}


@app.post("/process", status_code=status.HTTP_202_ACCEPTED, responses=MALFORMED_BODY)
async def process(body: ProcessRequest, background_tasks: BackgroundTasks) -> ProcessAccepted:
    job_id = new_id()
    background_tasks.add_task(process_data_async if body.run_async else process_data, job_id, body.data)
    return ProcessAccepted(status="processing started", job_id=job_id)


handler = make_handler(app)
