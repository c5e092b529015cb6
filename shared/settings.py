"""Configuration of every function, read once from the environment.

``Settings`` is filled from ``os.environ`` by ``_from_environment`` (variable names are the
field names in upper case, or a field's ``validation_alias``, in any case; tuple fields are
JSON) and validated by pydantic-core, which words the errors, as for a pydantic model. Each
field declares its pydantic-core schema instead of a type for pydantic to translate: a
``BaseModel`` of these ~40 fields took ~2.6 ms of every cold start to build (on python3.12),
the same validator built from its schema ~0.2 ms. pydantic-settings did the same reading and
cost every cold start ~10 ms of imports (itself and python-dotenv) for sources the template
never uses (.env files, secrets directories, CLI parsing).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, ClassVar, Literal

from pydantic_core import CoreSchema, SchemaValidator, ValidationError
from pydantic_core import core_schema as cs

EXIT_CONFIGURATION = 2
"""Exit code of a process that refused to start because a setting is wrong."""

SQS_QUEUE_URL = re.compile(r"https?://[^/\s]+/\d{12}/[A-Za-z0-9_-]{1,80}(\.fifo)?")
"""``https://sqs.<region>.amazonaws.com/<account>/<name>``, or a local endpoint with the same path."""


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


def _sqs_queue_url(value: str | None) -> str | None:
    if value and not SQS_QUEUE_URL.fullmatch(value):
        raise ValueError("expected an SQS queue URL, https://sqs.<region>.amazonaws.com/<12-digit account>/<name>")
    return value


def _prometheus_needs_a_server(value: str) -> str:
    if value == "prometheus" and running_on_lambda():
        raise ValueError(
            "METRICS=prometheus cannot work on Lambda (nothing scrapes a frozen environment, and prometheus-client "
            "is not in its layer): use METRICS=emf or auto"
        )
    return value


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


class FieldInfo:
    """One setting: its pydantic-core schema, default and variable (``validation_alias``)."""

    __slots__ = ("default", "default_factory", "description", "is_json", "schema", "validation_alias")

    def __init__(
        self,
        schema: CoreSchema,
        default: Any = None,
        *,
        default_factory: Callable[[], Any] | None = None,
        validation_alias: str | None = None,
        description: str = "",
    ) -> None:
        self.schema, self.default, self.default_factory = schema, default, default_factory
        self.validation_alias, self.description = validation_alias, description
        inner = schema.get("schema", schema)  # the value's own schema, under a validator function
        self.is_json = inner["type"] in ("tuple", "list", "dict", "set", "frozenset")

    def field(self) -> cs.TypedDictField:
        if self.default_factory is not None:
            with_default = cs.with_default_schema(self.schema, default_factory=self.default_factory)
        else:
            with_default = cs.with_default_schema(self.schema, default=self.default)
        return cs.typed_dict_field(with_default, required=False, validation_alias=self.validation_alias)


def _setting(
    schema: CoreSchema,
    default: Any = None,
    *,
    default_factory: Callable[[], Any] | None = None,
    validation_alias: str | None = None,
    description: str = "",
) -> Any:
    """A setting of ``Settings``; typed ``Any`` so that it can stand for the field's value."""
    return FieldInfo(
        schema, default, default_factory=default_factory, validation_alias=validation_alias, description=description
    )


def _text(default: str, description: str = "") -> Any:
    return _setting(cs.str_schema(), default, description=description)


def _choice(*choices: str, default: str, description: str = "") -> Any:
    return _setting(cs.literal_schema(list(choices)), default, description=description)


class Settings:
    """``Settings()`` reads the environment; keyword arguments override it. Read-only."""

    model_fields: ClassVar[dict[str, FieldInfo]]

    # --- logging -----------------------------------------------------------------
    service_name: str = _text("app", "Default `service` key; create_app() sets it per function.")
    api_root_path: str = _text(
        "", "Path prefix the HTTP API routes to this function (template.yaml: /<name>); the root_path."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = _setting(
        cs.no_info_before_validator_function(
            _upper, cs.literal_schema(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
        ),
        "INFO",
    )
    log_format: Literal["auto", "json", "console"] = _choice("auto", "json", "console", default="auto")
    log_task_args: bool = _setting(cs.bool_schema(), False, description="Log task arguments (e-mail addresses masked).")

    # --- metrics (shared/metrics) ------------------------------------------------------
    metrics: Literal["auto", "emf", "prometheus", "off"] = _setting(
        cs.no_info_after_validator_function(
            _prometheus_needs_a_server, cs.literal_schema(["auto", "emf", "prometheus", "off"])
        ),
        "auto",
        description="Task metrics: auto is emf (CloudWatch EMF lines) on Lambda, prometheus elsewhere.",
    )
    metrics_namespace: str | None = _setting(
        cs.nullable_schema(cs.str_schema()),
        None,
        validation_alias="POWERTOOLS_METRICS_NAMESPACE",
        description="CloudWatch namespace of the EMF lines; unset: shared.metrics.names.DEFAULT_NAMESPACE.",
    )
    worker_metrics_port: int = _setting(
        cs.int_schema(ge=0, le=65535), 0, description="Container worker's /metrics port; 0: none."
    )

    # --- background tasks --------------------------------------------------------
    task_backend: Literal["auto", "inline", "lambda-extension"] = _choice(
        "auto",
        "inline",
        "lambda-extension",
        default="auto",
        description="Where in-process tasks run; auto picks lambda-extension on Lambda.",
    )
    task_timeout_seconds: float | None = _setting(
        cs.nullable_schema(cs.float_schema(gt=0)), None, description="Default per-task timeout."
    )
    shutdown_grace_seconds: float = _setting(
        cs.float_schema(gt=0), 30.0, description="How long SIGTERM waits for in-flight tasks before cancelling them."
    )
    lambda_deadline_margin_ms: int = _setting(
        cs.int_schema(ge=0), 500, description="Tasks still running this close to the invocation deadline are timed out."
    )
    task_handoff: Literal["auto", "off"] = _choice(
        "auto",
        "off",
        default="auto",
        description="auto: with TASK_QUEUE_URL, hand registered tasks that cannot finish here to the queue.",
    )

    # --- notifications -----------------------------------------------------------
    notification_log_path: str = _setting(cs.str_schema(), default_factory=_default_notification_log)

    # --- AWS -----------------------------------------------------------------------
    aws_region: str = _setting(cs.str_schema(), "us-east-1", validation_alias="AWS_DEFAULT_REGION")
    aws_endpoint_url: str | None = _setting(cs.nullable_schema(cs.str_schema()), None)
    task_queue_url: str | None = _setting(
        cs.no_info_after_validator_function(_sqs_queue_url, cs.nullable_schema(cs.str_schema())), None
    )
    durable_tasks: str = _text("", "Comma-separated task names sent to SQS ('*' for all).")
    # Names template.yaml passes (USERS_TABLE: !Ref UsersTable); a default is the resource's local
    # name (infra/template.py, checked by tests/test_resources.py). A function's own resource needs
    # no field here: shared.resources.resource_name("ORDERS_TABLE").
    idempotency_table: str = _text("fastapi-tasks-idempotency")
    users_table: str = _text("fastapi-tasks-users")
    audit_table: str = _text("fastapi-tasks-audit")
    items_table: str = _text("fastapi-tasks-items")
    search_table: str = _text("fastapi-tasks-search")
    uploads_table: str = _text("fastapi-tasks-uploads")
    uploads_bucket: str = _text("fastapi-tasks-uploads")
    mail_sender: str = _text("no-reply@example.com")

    # --- durable tasks (SQS + worker, docs/durable-tasks.md) -------------------------
    task_max_receives: int = _setting(
        cs.int_schema(ge=1),
        5,
        description="Receives before SQS dead-letters a message: the queue's RedrivePolicy maxReceiveCount.",
    )
    task_message_max_bytes: int = _setting(
        cs.int_schema(gt=0), 262_144, description="SQS's message size limit (body + attributes)."
    )
    task_enqueue_attempts: int = _setting(
        cs.int_schema(ge=1), 4, description="SendMessageBatch tries before a task is logged as lost."
    )
    task_enqueue_backoff_seconds: float = _setting(
        cs.float_schema(ge=0), 0.2, description="First retry delay; doubles, with jitter."
    )
    idempotency_expiry_seconds: int = _setting(
        cs.int_schema(gt=0), 86_400, description="How long a completed task_id is remembered."
    )
    task_modules: str = _text("shared.tasks", "Modules/packages the worker imports to register tasks.")
    worker_wait_seconds: int = _setting(
        cs.int_schema(ge=0, le=20), 20, description="Long-poll wait; bounds the worker's SIGTERM delay."
    )
    worker_batch_size: int = _setting(
        cs.int_schema(ge=1, le=10), 10, description="Messages per ReceiveMessage in the container worker."
    )

    # --- users, uploads, items (functions/users, uploads, items) -----------------
    mail_backend: Literal["ses", "log"] = _choice(
        "ses",
        "log",
        default="ses",
        description="ses: send through SES; log: append to the notification log (no AWS needed).",
    )
    items_notify_to: str = _text("catalog@example.com", "Who is told about new items.")
    upload_max_bytes: int = _setting(
        cs.int_schema(gt=0), 4 * 1024 * 1024, description="Largest accepted upload (Lambda: < 4.5 MB)."
    )
    upload_part_bytes: int = _setting(
        cs.int_schema(ge=5 * 1024 * 1024), 8 * 1024 * 1024, description="S3 multipart part size."
    )
    upload_allowed_types: tuple[str, ...] = _setting(
        cs.tuple_schema([cs.str_schema()], variadic_item_index=0),
        ("image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf", "text/plain"),
        description='Accepted sniffed content types; JSON list in the environment, e.g. ["image/png"].',
    )
    thumbnail_sizes: tuple[int, ...] = _setting(
        cs.tuple_schema([cs.int_schema()], variadic_item_index=0),
        (128, 512),
        description="Longest side, in pixels, of each thumbnail.",
    )
    thumbnail_max_pixels: int = _setting(
        cs.int_schema(gt=0), 40_000_000, description="Larger images fail instead of exhausting memory."
    )
    image_memory_budget_mb: int | None = _setting(
        cs.nullable_schema(cs.int_schema(gt=0)),
        None,
        description="Memory for one decoded image (4 bytes a pixel); default half the function's.",
    )

    def __init__(self, **values: Any) -> None:
        validated = _VALIDATOR.validate_python({**_from_environment(type(self)), **values})
        for name, value in validated.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"settings are read-only ({name}): set the environment variable instead")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.model_fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and type(other) is type(self) and self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.model_fields)
        return f"{type(self).__name__}({shown})"


Settings.model_fields = {name: value for name, value in vars(Settings).items() if isinstance(value, FieldInfo)}
for _name in Settings.model_fields:
    delattr(Settings, _name)  # an instance's values, not the declarations, answer settings.<name>
_VALIDATOR = SchemaValidator(
    cs.typed_dict_schema(
        {name: field.field() for name, field in Settings.model_fields.items()},
        extra_behavior="ignore",
    ),
    cs.CoreConfig(title="Settings"),
)


def _from_environment(model: type[Settings]) -> dict[str, Any]:
    """Each field's variable, found in any case; keyed as pydantic expects it (the alias, if any)."""
    environment = {name.upper(): value for name, value in os.environ.items()}
    found: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = field.validation_alias if isinstance(field.validation_alias, str) else name
        value = environment.get(key.upper())
        if value is None:
            continue
        if field.is_json:
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
        problems.append(f"{variable}={error['input']!r}: {message}")
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
