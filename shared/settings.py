"""Configuration of every function, read once from the environment (pydantic-settings)."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def running_on_lambda() -> bool:
    """True inside a Lambda execution environment (real, SAM local, or the test emulator)."""
    return "AWS_LAMBDA_RUNTIME_API" in os.environ


def _default_notification_log() -> str:
    # The code directory is read-only on Lambda; /tmp is the only writable place.
    return "/tmp/notifications.log" if running_on_lambda() else "log.txt"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    # --- logging -----------------------------------------------------------------
    service_name: str = Field("app", description="Default `service` key; create_app() sets it per function.")
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_task_args: bool = Field(False, description="Log task arguments (e-mail addresses masked).")

    # --- background tasks --------------------------------------------------------
    task_backend: Literal["auto", "inline", "lambda-extension"] = Field(
        "auto", description="Where in-process tasks run; auto picks lambda-extension on Lambda."
    )
    task_timeout_seconds: float | None = Field(None, gt=0, description="Default per-task timeout.")
    shutdown_grace_seconds: float = Field(
        30.0, gt=0, description="How long SIGTERM waits for in-flight tasks before cancelling them."
    )
    lambda_deadline_margin_ms: int = Field(
        500, ge=0, description="Tasks still running this close to the invocation deadline are timed out."
    )

    # --- notifications -----------------------------------------------------------
    notification_log_path: str = Field(default_factory=_default_notification_log)

    # --- AWS -----------------------------------------------------------------------
    aws_region: str = Field("us-east-1", validation_alias="AWS_DEFAULT_REGION")
    aws_endpoint_url: str | None = None
    task_queue_url: str | None = None
    durable_tasks: str = Field("", description="Comma-separated task names sent to SQS ('*' for all).")
    idempotency_table: str = "fastapi-tasks-idempotency"
    users_table: str = "fastapi-tasks-users"
    audit_table: str = "fastapi-tasks-audit"
    items_table: str = "fastapi-tasks-items"
    search_table: str = "fastapi-tasks-search"
    uploads_table: str = "fastapi-tasks-uploads"
    uploads_bucket: str = "fastapi-tasks-uploads"
    mail_sender: str = "no-reply@example.com"


@lru_cache
def get_settings() -> Settings:
    return Settings()
