"""Configuration of every function, read once from the environment.

A pydantic model filled from ``os.environ`` by ``_from_environment`` (variable names are
the field names in upper case, or a field's ``validation_alias``, in any case; tuple fields
are JSON): pydantic validates and words the errors. pydantic-settings did the same reading
and cost every cold start ~10 ms of imports (itself and python-dotenv) for sources the
template never uses (.env files, secrets directories, CLI parsing).

No ``from __future__ import annotations`` here: pydantic would evaluate each of the model's
fifty annotations from its text (a compile and an eval each) at every cold start.
"""

import importlib.util
import json
import os
import re
import sys
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

EXIT_CONFIGURATION = 2
"""Exit code of a process that refused to start because a setting is wrong."""

MAX_PORT = 65_535
_HOUR_S = 3600
_DAY_S = 24 * _HOUR_S
_GIB = 1024**3
_LAMBDA_TIMEOUT_MS = 900_000
_LAMBDA_MEMORY_MB = 10_240

AWS_REGION = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
"""What botocore accepts as a region name (a host label); anything else fails at the first client."""
_ADDRESS = r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+"
EMAIL_ADDRESS = re.compile(rf"{_ADDRESS}|[^<>@]*<{_ADDRESS}>")
"""An address SES could send from or to, ``a@example.com`` or ``Name <a@example.com>``."""

SQS_QUEUE_URL = re.compile(r"https?://[^/\s]+/\d{12}/[A-Za-z0-9_-]{1,80}(\.fifo)?")
"""``https://sqs.<region>.amazonaws.com/<account>/<name>``, or a local endpoint with the same path."""


def check_url(value: str) -> None:
    """An http(s) URL with a host and, if any, a port in range; else ValueError saying what is expected."""
    expected = "expected an http:// or https:// URL, e.g. http://127.0.0.1:5000"
    try:
        parts = urlsplit(value)
        port = parts.port  # ValueError when out of range or not a number
    except ValueError:
        raise ValueError(expected) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0 or any(c.isspace() for c in value):
        raise ValueError(expected)


def port_number(value: object) -> int:
    """A TCP port, 1 to 65535, from an int or its decimal text; else ValueError saying so."""
    text = str(value).strip()
    if not text.isdecimal() or not 1 <= int(text) <= MAX_PORT:
        raise ValueError(f"expected a port number, 1 to {MAX_PORT}")
    return int(text)


def module_names(spec: str) -> list[str]:
    """``TASK_MODULES``' comma-separated module names."""
    return [name for name in (part.strip() for part in spec.split(",")) if name]


def _module_exists(name: str) -> bool:
    """Found on the path, without importing it (its parent packages are imported)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package is missing, or the name is malformed
        return False


class ConfigurationError(Exception):
    """A setting is wrong; the message is one line naming the variable, its value and what is expected."""


class SettingsError(ValueError):
    """A variable of a tuple setting is not JSON."""

    def __init__(self, field_name: str, exc: ValueError) -> None:
        super().__init__(f'error parsing value for field "{field_name}" from the environment: {exc}')


def running_on_lambda() -> bool:
    """True inside a Lambda execution environment (real, SAM local, or the test emulator)."""
    return "AWS_LAMBDA_RUNTIME_API" in os.environ


def _default_notification_log() -> str:
    # The code directory is read-only on Lambda; /tmp is the only writable place.
    return "/tmp/notifications.log" if running_on_lambda() else "log.txt"


class Settings(BaseModel):
    """``Settings()`` reads the environment; keyword arguments override it."""

    # allow_inf_nan=False: inf, -inf and nan are no duration or size (``SHUTDOWN_GRACE_SECONDS=inf``).
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    def __init__(self, **values: Any) -> None:
        super().__init__(**{**_from_environment(type(self)), **values})

    # --- logging -----------------------------------------------------------------
    service_name: str = Field("app", description="Default `service` key; create_app() sets it per function.")
    api_root_path: str = Field(
        "", description="Path prefix the HTTP API routes to this function (template.yaml: /<name>); the root_path."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_task_args: bool = Field(False, description="Log task arguments (e-mail addresses masked).")

    @field_validator("task_queue_url")
    @classmethod
    def _sqs_queue_url(cls, value: str | None) -> str | None:
        if value and not SQS_QUEUE_URL.fullmatch(value):
            raise ValueError("expected an SQS queue URL, https://sqs.<region>.amazonaws.com/<12-digit account>/<name>")
        return value

    @field_validator("aws_region")
    @classmethod
    def _region_name(cls, value: str) -> str:
        if not AWS_REGION.fullmatch(value):
            raise ValueError("expected a region name, e.g. us-east-1")
        return value

    @field_validator("mail_sender", "items_notify_to")
    @classmethod
    def _email_address(cls, value: str) -> str:
        if not EMAIL_ADDRESS.fullmatch(value):
            raise ValueError("expected an e-mail address, e.g. no-reply@example.com")
        return value

    @field_validator("aws_endpoint_url")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if value:
            check_url(value)
        return value

    @field_validator("task_modules")
    @classmethod
    def _importable_modules(cls, value: str) -> str:
        missing = [name for name in module_names(value) if not _module_exists(name)]
        if missing:
            raise ValueError(
                f"no module named {', '.join(map(repr, missing))}: expected comma-separated importable modules, "
                "e.g. shared.tasks,functions.orders.tasks"
            )
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: object) -> object:
        # A wrong level stays as written: the error quotes LOG_LEVEL='verbose', not 'VERBOSE'.
        if isinstance(value, str) and value.upper() in typing.get_args(cls.model_fields["log_level"].annotation):
            return value.upper()
        return value

    # --- metrics (shared/metrics) ------------------------------------------------------
    metrics: Literal["auto", "emf", "prometheus", "off"] = Field(
        "auto", description="Task metrics: auto is emf (CloudWatch EMF lines) on Lambda, prometheus elsewhere."
    )
    metrics_namespace: str | None = Field(
        None,
        validation_alias="POWERTOOLS_METRICS_NAMESPACE",
        description="CloudWatch namespace of the EMF lines; unset: shared.metrics.names.DEFAULT_NAMESPACE.",
    )
    worker_metrics_port: int = Field(0, ge=0, le=MAX_PORT, description="Container worker's /metrics port; 0: none.")

    @field_validator("metrics")
    @classmethod
    def _prometheus_needs_a_server(cls, value: str) -> str:
        if value == "prometheus" and running_on_lambda():
            raise ValueError(
                "METRICS=prometheus cannot work on Lambda (nothing scrapes a frozen environment, and prometheus-client "
                "is not in its layer): use METRICS=emf or auto"
            )
        return value

    # --- background tasks --------------------------------------------------------
    task_backend: Literal["auto", "inline", "lambda-extension"] = Field(
        "auto", description="Where in-process tasks run; auto picks lambda-extension on Lambda."
    )
    task_timeout_seconds: float | None = Field(
        None, gt=0, le=_DAY_S, description="Default per-task timeout (at most a day)."
    )
    shutdown_grace_seconds: float = Field(
        30.0,
        gt=0,
        le=_HOUR_S,
        description="How long SIGTERM waits for in-flight tasks before cancelling them (at most an hour).",
    )
    lambda_deadline_margin_ms: int = Field(
        500,
        ge=0,
        le=_LAMBDA_TIMEOUT_MS,
        description="Tasks still running this close to the invocation deadline are timed out.",
    )
    task_running_notice_seconds: float = Field(
        10.0,
        ge=0,
        le=_DAY_S,
        description="A task still running after this long logs task.running, once (0: never; at most a day).",
    )
    task_handoff: Literal["auto", "off"] = Field(
        "auto", description="auto: with TASK_QUEUE_URL, hand registered tasks that cannot finish here to the queue."
    )

    # --- task status (docs/task-status.md) -----------------------------------------------
    track_tasks: bool = Field(
        False, description="Track every registered task this function queues, not only tracked=True ones."
    )
    task_status_table: str = "fastapi-tasks-task-status"
    task_status_ttl_seconds: int = Field(
        7 * _DAY_S, ge=60, le=366 * _DAY_S, description="How long a task's status record is kept (the table's TTL)."
    )
    task_status_result_max_bytes: int = Field(
        4096, ge=0, le=65_536, description="Largest JSON result a tracked task's record shows; larger ones are refused."
    )

    # --- notifications -----------------------------------------------------------
    notification_log_path: str = Field(default_factory=_default_notification_log)

    # --- AWS -----------------------------------------------------------------------
    aws_region: str = Field("us-east-1", validation_alias="AWS_DEFAULT_REGION")
    aws_endpoint_url: str | None = Field(None, description="Every AWS client's endpoint: moto's server, LocalStack.")
    task_queue_url: str | None = None
    durable_tasks: str = Field("", description="Comma-separated task names sent to SQS ('*' for all).")
    # Names template.yaml passes (USERS_TABLE: !Ref UsersTable); a default is the resource's local
    # name (infra/template.py, checked by tests/test_resources.py). A function's own resource needs
    # no field here: shared.resources.resource_name("ORDERS_TABLE").
    idempotency_table: str = "fastapi-tasks-idempotency"
    users_table: str = "fastapi-tasks-users"
    audit_table: str = "fastapi-tasks-audit"
    items_table: str = "fastapi-tasks-items"
    search_table: str = "fastapi-tasks-search"
    uploads_table: str = "fastapi-tasks-uploads"
    uploads_bucket: str = "fastapi-tasks-uploads"
    mail_sender: str = "no-reply@example.com"

    # --- durable tasks (SQS + worker, docs/durable-tasks.md) -------------------------
    task_max_receives: int = Field(
        5,
        ge=1,
        le=1000,
        description="Receives before SQS dead-letters a message: the queue's RedrivePolicy maxReceiveCount.",
    )
    task_message_max_bytes: int = Field(
        262_144, gt=0, le=1_048_576, description="SQS's message size limit (body + attributes)."
    )
    task_enqueue_attempts: int = Field(
        4, ge=1, le=100, description="SendMessageBatch tries before a task is logged as lost."
    )
    task_enqueue_backoff_seconds: float = Field(
        0.2, ge=0, le=60, description="First retry delay; doubles, with jitter."
    )
    idempotency_expiry_seconds: int = Field(
        86_400, gt=0, le=366 * _DAY_S, description="How long a completed task_id is remembered."
    )
    task_modules: str = Field("shared.tasks", description="Modules/packages the worker imports to register tasks.")
    worker_wait_seconds: int = Field(20, ge=0, le=20, description="Long-poll wait; bounds the worker's SIGTERM delay.")
    worker_batch_size: int = Field(10, ge=1, le=10, description="Messages per ReceiveMessage in the container worker.")
    worker_concurrency: int = Field(
        10, ge=1, le=100, description="Messages of a batch the worker runs side by side; 1: one at a time."
    )

    # --- users, uploads, items (functions/users, uploads, items) -----------------
    mail_backend: Literal["ses", "log"] = Field(
        "ses", description="ses: send through SES; log: append to the notification log (no AWS needed)."
    )
    items_notify_to: str = Field("catalog@example.com", description="Who is told about new items.")
    upload_max_bytes: int = Field(
        4 * 1024 * 1024, gt=0, le=5 * _GIB, description="Largest accepted upload (Lambda: < 4.5 MB)."
    )
    upload_part_bytes: int = Field(
        8 * 1024 * 1024, ge=5 * 1024 * 1024, le=5 * _GIB, description="S3 multipart part size (S3: 5 MiB to 5 GiB)."
    )
    upload_allowed_types: tuple[str, ...] = Field(
        ("image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf", "text/plain"),
        description='Accepted sniffed content types; JSON list in the environment, e.g. ["image/png"].',
    )
    thumbnail_sizes: tuple[Annotated[int, Field(gt=0, le=10_000)], ...] = Field(
        (128, 512), description="Longest side, in pixels, of each thumbnail."
    )
    thumbnail_max_pixels: int = Field(
        40_000_000, gt=0, le=1_000_000_000, description="Larger images fail instead of exhausting memory."
    )
    image_memory_budget_mb: int | None = Field(
        None,
        gt=0,
        le=_LAMBDA_MEMORY_MB,
        description="Memory for one decoded image (4 bytes a pixel); default half the function's.",
    )

    # --- the HTTP server (shared.serve) ------------------------------------------------
    port: int = Field(8000, description="Port `python -m shared.serve` listens on (its --port overrides it).")

    @field_validator("port", mode="before")
    @classmethod
    def _port_number(cls, value: object) -> int:
        return port_number(value)


_COMPLEX = (tuple, list, dict, set, frozenset)


def _is_complex(annotation: Any) -> bool:
    origin = typing.get_origin(annotation) or annotation
    if origin in _COMPLEX:
        return True
    return any(_is_complex(arg) for arg in typing.get_args(annotation) if arg is not type(None))


def _from_environment(model: type[Settings]) -> dict[str, Any]:
    """Each field's variable, found in any case; keyed as pydantic expects it (the alias, if any)."""
    environment = {name.upper(): value for name, value in os.environ.items()}
    found: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = field.validation_alias if isinstance(field.validation_alias, str) else name
        value = environment.get(key.upper())
        if value is None:
            continue
        if _is_complex(field.annotation):
            try:
                found[key] = json.loads(value)
            except ValueError as exc:
                raise SettingsError(name, exc) from None
        else:
            found[key] = value
    return found


def _variable(field_name: str) -> str:
    alias = Settings.model_fields[field_name].validation_alias if field_name in Settings.model_fields else None
    return alias if isinstance(alias, str) else field_name.upper()


def _environment_value(variable: str) -> str | None:
    return next((value for name, value in os.environ.items() if name.upper() == variable.upper()), None)


def describe_error(exc: ValidationError | SettingsError) -> str:
    """One line: each wrong variable, the value it has and what is expected."""
    if isinstance(exc, SettingsError):
        found = re.search(r'field "(\w+)"', str(exc))
        variable = _variable(found.group(1)) if found else "a setting"
        return f"{variable}={os.environ.get(variable, '')!r}: expected a JSON value ({exc})"
    problems = []
    for error in exc.errors():
        variable = _variable(str(error["loc"][0])) if error["loc"] else "settings"
        message = error["msg"].removeprefix("Value error, ")
        # An item of a list setting: the variable's value as the user wrote it, not the item.
        written = _environment_value(variable) if len(error["loc"]) > 1 else None
        problems.append(f"{variable}={written if written is not None else error['input']!r}: {message}")
    return "; ".join(problems).replace("\n", " ")


def load_settings() -> Settings:
    try:
        return Settings()
    except (ValidationError, SettingsError) as exc:
        raise ConfigurationError(describe_error(exc)) from None


@lru_cache
def get_settings() -> Settings:
    return load_settings()


@contextmanager
def exit_on_configuration_error() -> Iterator[None]:
    """Around a container's start: a wrong setting prints one line and exits with code 2, no traceback."""
    try:
        yield
    except ConfigurationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CONFIGURATION) from None
