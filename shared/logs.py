"""One structlog pipeline for every log line a function prints.

Our own events, uvicorn's access and error logs and any library using the standard
``logging`` module all end in the same handler: JSON lines on stdout by default (what
CloudWatch and ``docker logs`` collect), a readable console format for humans.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import sys
import time
from typing import Any, TextIO, cast

import orjson
import structlog
from structlog.processors import NAME_TO_LEVEL
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

from shared.log_context import PREFIX_LENGTH, STRUCTLOG_VARS, bound
from shared.log_stream import LineBatcher
from shared.metrics import count_task_events
from shared.settings import get_settings

__all__ = [
    "batch_lines",
    "bound",
    "configure_logging",
    "ensure_logging_configured",
    "flush_logs",
    "get_logger",
    "iso_now",
    "mask_emails",
]


# The local part of an address: RFC 5322's atext and dots, any non-ASCII letter (RFC 6531), and
# an apostrophe after one of those (o'leary). Left out, so that the text around an address
# survives: whitespace, quotes at its start, the separators ( ) , : ; < > [ ] \\ and the path's /.
# Each run of such characters is read once (a possessive loop, starting only at a run's start):
# linear time, whatever a request puts in a header. A quoted local part ("jane doe"@) is masked
# whole, and so is any other character right before an @ (a/@...): nothing next to it survives.
@functools.cache  # compiled with the first address, not at every cold start
def _address_pattern(local: str, at: str) -> re.Pattern[str]:
    return re.compile(
        rf'(?P<quoted>"(?:[^"\\\r\n]|\\.){{1,64}}")(?={at}[\w-])'
        rf"|(?<!{local})(?P<first>{local})(?:{local}|(?<={local})'(?={local}|{at}))*+(?={at}[\w-])"
        rf"|[^\s@](?={at}[\w-])"
    )


_SCALARS = frozenset({int, float, bool, type(None)})
_TEXT_OR_CONTAINERS = (str, list, tuple, dict)
_LOCAL = r"[^\s@\"'(),:;<>\[\]\\/]"
_LOCAL_BEFORE_QUOTED_AT = r"[^\s@\"'(),:;<>\[\]\\/%]"  # URL-quoted (%40), as in uvicorn's access lines


def _masked(match: re.Match[str]) -> str:
    if match["quoted"]:
        return '"***"'
    return (match["first"] or "") + "***"


def _mask(text: str) -> str:
    # The membership tests cost a fraction of a regex: most values hold no address.
    if "@" in text:
        text = _address_pattern(_LOCAL, "@").sub(_masked, text)
    if "%40" in text:
        text = _address_pattern(_LOCAL_BEFORE_QUOTED_AT, "%40").sub(_masked, text)
    return text


class _ModuleLogger:
    """A module-level logger: structlog's lazy logger that also keeps each method it looks up.

    With ``cache_logger_on_first_use`` structlog keeps the assembled logger, but still
    reaches every ``log.info`` through a ``__getattr__``; keeping the method skips that.
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, method_name: str) -> Any:
        if method_name.startswith("_"):
            raise AttributeError(method_name)
        method = getattr(structlog.get_logger(self._name), method_name)
        if structlog.get_config()["cache_logger_on_first_use"]:
            setattr(self, method_name, method)
        return method


def get_logger(name: str) -> Any:
    """A logger for module level: assembled on first use, after ``configure_logging``."""
    return _ModuleLogger(name)


def mask_emails(value: Any) -> Any:
    """``jane.doe@example.com`` -> ``j***@example.com``, recursively in lists and dicts."""
    if isinstance(value, str):
        return _mask(value)
    if isinstance(value, (list, tuple)):
        return [mask_emails(item) for item in value]
    if isinstance(value, dict):
        return {key: mask_emails(item) for key, item in value.items()}
    return value


def _mask_emails_everywhere(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """The last processor before rendering: no e-mail address in any value of any line.

    Structured fields, error strings, tracebacks rendered as data and uvicorn's lines alike,
    whatever the code that logged them remembered to mask. About half a microsecond on a
    line without an address (exact type checks first, a substring test before any regex).
    """
    for key, value in event_dict.items():
        cls = value.__class__
        if cls is str:
            if "@" in value or "%40" in value:
                event_dict[key] = _mask(value)
        elif cls not in _SCALARS and isinstance(value, _TEXT_OR_CONTAINERS):
            event_dict[key] = mask_emails(value)
    return event_dict


def _rename_stdlib_logger(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Keep the emitting logger's name, useful for uvicorn's and boto's lines."""
    record = event_dict.get("_record")
    if record is not None:
        event_dict.setdefault("logger", record.name)
    return event_dict


def _add_error_summary(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """``error_type`` and ``error`` beside the traceback: what queries filter and group on."""
    exc_info = event_dict.get("exc_info")
    if exc_info is True:
        exc_info = sys.exc_info()
    exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info
    if isinstance(exc, BaseException):
        event_dict.setdefault("error_type", type(exc).__qualname__)
        event_dict.setdefault("error", str(exc))
    return event_dict


class _IsoTimestamp:
    """``timestamp`` as ``TimeStamper(fmt="iso", utc=True)`` writes it, for half its cost.

    The date and time of day are formatted once per second; each line adds its microseconds.
    """

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")

    def now(self) -> str:
        second, microsecond = divmod(time.time_ns() // 1000, 1_000_000)
        cached_second, formatted = self._second
        if second != cached_second:
            formatted = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, formatted)
        return f"{formatted}.{microsecond:06d}Z"

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict["timestamp"] = self.now()
        return event_dict


_clock = _IsoTimestamp()


def iso_now() -> str:
    """Now, as a line's ``timestamp`` says it (UTC, microseconds): for a time a line reports, such as ``started_at``."""
    return _clock.now()


_LEVEL_ALIASES = {"warn": "warning", "exception": "error"}
"""What ``structlog.processors.add_log_level`` writes for these methods."""


class _Prepare:
    """Every line's common keys in one processor, in the order separate processors would add them.

    The request's bound keys (``merge_contextvars``, read through ``bound``'s variables), ``level``,
    ``timestamp``, ``service``, and, only for a line with ``exc_info``, ``error_type``/``error``
    and the traceback as data (``exceptions``, JSON only). One call instead of seven per line.
    """

    def __init__(self, service: str, exceptions: structlog.processors.ExceptionRenderer | None) -> None:
        self.service = service
        self.exceptions = exceptions
        self.timestamp = _IsoTimestamp()
        self._keys: tuple[tuple[str, Any], ...] = ()  # (log key, structlog's variable), kept until one is added

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        if STRUCTLOG_VARS is None:
            structlog.contextvars.merge_contextvars(logger, method_name, event_dict)
        else:
            keys = self._keys
            if len(keys) != len(STRUCTLOG_VARS):  # structlog only ever adds variables
                keys = self._keys = tuple((name[PREFIX_LENGTH:], var) for name, var in tuple(STRUCTLOG_VARS.items()))
            for key, var in keys:
                value = var.get()
                if value is not Ellipsis:
                    event_dict.setdefault(key, value)
        event_dict["level"] = _LEVEL_ALIASES.get(method_name, method_name)
        event_dict = self.timestamp(logger, method_name, event_dict)
        event_dict.setdefault("service", self.service)
        if "exc_info" in event_dict:
            event_dict = _add_error_summary(logger, method_name, event_dict)
            if self.exceptions is not None:
                event_dict = self.exceptions(logger, method_name, event_dict)
        return event_dict


def _unserializable(value: Any) -> Any:
    """What structlog's JSONRenderer writes for a value JSON has no type for: its ``__structlog__()``, else its repr."""
    to_log = getattr(value, "__structlog__", None)
    return to_log() if callable(to_log) else repr(value)


def _json(event_dict: EventDict) -> str:
    return orjson.dumps(event_dict, default=_unserializable, option=orjson.OPT_NON_STR_KEYS).decode()


def _masked_json(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
    """The JSON renderer, masking e-mail addresses (``_mask_emails_everywhere``) only in lines that hold one.

    Rendering first and testing the text once costs less than testing every value of every
    line; the rare line with an ``@`` (or ``%40``) is masked and rendered again. orjson is
    called directly: structlog's JSONRenderer around it costs as much again as the serializing.
    """
    text = _json(event_dict)
    if "@" in text or "%40" in text:
        text = _json(_mask_emails_everywhere(logger, method_name, event_dict))
    return text


def _drop_below_root_level(_: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Our events honour the root logger's level, as stdlib lines do, even when it changes later."""
    if NAME_TO_LEVEL[method_name] < logging.root.level:
        raise structlog.DropEvent
    return event_dict


def _counting_logger(min_level: int) -> type[Any]:
    """structlog's filtering logger at ``min_level``, whose filtered-out ``debug`` still counts a task event.

    ``task.started`` is DEBUG, yet it moves ``tasks_started``, the in-flight gauge and the task's
    span: below ``min_level`` it is handed to ``count_task_events`` alone, without the pipeline
    (structlog's drop of an event costs about a third of writing it). Other debug calls stay no-ops.
    """
    base: type[Any] = structlog.make_filtering_bound_logger(min_level)
    if min_level <= logging.DEBUG:
        return base

    class CountingBoundLogger(base):  # type: ignore[misc]
        def debug(self, event: str, *args: Any, **kw: Any) -> None:
            if event.__class__ is str and event.startswith("task."):
                count_task_events(None, "debug", {**self._context, **kw, "event": event})

    return CountingBoundLogger


def _use_json(log_format: str, stream: TextIO) -> bool:
    if log_format == "auto":
        return not (hasattr(stream, "isatty") and stream.isatty())
    return log_format == "json"


_configured = False
_output: LineBatcher | None = None
"""Where every line goes since the last ``configure_logging``."""


def batch_lines(loop: asyncio.AbstractEventLoop) -> None:
    """In a server: the lines ``loop`` prints are written together, a few milliseconds later (``shared.log_stream``)."""
    if _output is not None:
        _output.bind(loop)


def flush_logs() -> None:
    """Write every pending line now and each later one at once: when the server's loop stops, before ``os._exit``."""
    if _output is not None:
        _output.unbind()


def ensure_logging_configured(service: str | None = None) -> None:
    """Configure logging unless the hosting process (a server, a test) already did."""
    if not _configured:
        configure_logging(service)


def configure_logging(service: str | None = None, stream: TextIO | None = None, *, cache_loggers: bool = True) -> None:
    """Configure structlog and the standard library in one place.

    Our own events take structlog's native path (a logger writing straight to the stream,
    assembled once per module logger, orjson), several times cheaper per line than a detour
    through ``logging``; lines from the standard library (uvicorn, boto) get the same
    processors and renderer through ``ProcessorFormatter``, so both print one format.
    Loggers keep the configuration they first met: a process that reconfigures (the tests)
    passes ``cache_loggers=False``.
    """
    global _configured, _output
    _configured = True
    settings = get_settings()
    service = service or settings.service_name
    if _output is not None:
        _output.unbind()
    raw = stream or sys.stdout
    _output = LineBatcher(raw)
    output = cast(TextIO, _output)  # the two methods loggers call, write and flush
    level = logging.getLevelNamesMapping()[settings.log_level]

    shared: list[Processor]
    renderer: Processor
    if _use_json(settings.log_format, raw):
        # Tracebacks as data, without local variables: they would leak task arguments.
        exceptions = structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        shared, renderer = [_Prepare(service, exceptions)], _masked_json
    else:
        shared, renderer = [_Prepare(service, None), _mask_emails_everywhere], structlog.dev.ConsoleRenderer()

    structlog.configure(
        # Task events are counted before the level filters them out: metrics do not depend on LOG_LEVEL.
        processors=[count_task_events, _drop_below_root_level, *shared, renderer],
        wrapper_class=_counting_logger(min(level, logging.INFO)),
        logger_factory=structlog.WriteLoggerFactory(output),
        cache_logger_on_first_use=cache_loggers,
    )

    handler = logging.StreamHandler(output)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[_rename_stdlib_logger, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        # Only loggers uvicorn gave a handler of its own; an access log switched off stays off.
        if logger.handlers:
            logger.handlers = []
            logger.propagate = True
    # Mangum's "GET /path 200" access line says what request.completed says, once more per request.
    logging.getLogger("mangum.http").setLevel(logging.WARNING if level > logging.DEBUG else level)
    # boto's debug chatter would drown the task events at LOG_LEVEL=DEBUG; Mangum narrates every
    # lifespan step at INFO (six lines per Lambda environment): its warnings and errors are enough.
    for name in ("botocore", "boto3", "urllib3"):
        logging.getLogger(name).setLevel(max(level, logging.INFO))
    logging.getLogger("mangum.lifespan").setLevel(max(level, logging.WARNING))
