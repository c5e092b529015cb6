"""One structlog pipeline for every log line a function prints.

Our own events, uvicorn's access and error logs and any library using the standard
``logging`` module all end in the same handler: JSON lines on stdout by default (what
CloudWatch and ``docker logs`` collect), a readable console format for humans.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

from shared.settings import get_settings

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+)")

get_logger = structlog.stdlib.get_logger


def mask_emails(value: Any) -> Any:
    """``jane.doe@example.com`` -> ``j***@example.com``, recursively in lists and dicts."""
    if isinstance(value, str):
        return _EMAIL.sub(r"\1***@\2", value)
    if isinstance(value, (list, tuple)):
        return [mask_emails(item) for item in value]
    if isinstance(value, dict):
        return {key: mask_emails(item) for key, item in value.items()}
    return value


def _add_service(service: str) -> Processor:
    def add_service(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    return add_service


def _rename_stdlib_logger(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Keep the emitting logger's name, useful for uvicorn's and boto's lines."""
    record = event_dict.get("_record")
    if record is not None:
        event_dict.setdefault("logger", record.name)
    return event_dict


def _use_json(log_format: str, stream: TextIO) -> bool:
    if log_format == "auto":
        return not (hasattr(stream, "isatty") and stream.isatty())
    return log_format == "json"


_configured = False


def ensure_logging_configured(service: str | None = None) -> None:
    """Configure logging unless the hosting process (a server, a test) already did."""
    if not _configured:
        configure_logging(service)


def configure_logging(service: str | None = None, stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library in one place; safe to call again."""
    global _configured
    _configured = True
    settings = get_settings()
    service = service or settings.service_name
    stream = stream or sys.stdout
    as_json = _use_json(settings.log_format, stream)

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_service(service),
    ]
    renderer: Processor
    if as_json:
        renderer = structlog.processors.JSONRenderer()
        # Tracebacks as data, without local variables: they would leak task arguments.
        shared.append(structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)))
    else:
        renderer = structlog.dev.ConsoleRenderer()

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[_rename_stdlib_logger, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    # boto's debug chatter would drown the task events at LOG_LEVEL=DEBUG.
    for name in ("botocore", "boto3", "urllib3"):
        logging.getLogger(name).setLevel(max(root.level, logging.INFO))
