"""One trace id from a request to its tasks, and to the worker's run of each durable task.

- A request's trace: on Lambda, the function's X-Ray trace (``_X_AMZN_TRACE_ID``); elsewhere the
  caller's W3C ``traceparent`` header, else a new one. Its id is the ``trace_id`` log key of every
  line of the request and of its tasks (32 hex digits, W3C's form; X-Ray shows the same id as
  ``1-<first 8>-<last 24>``).
- A durable task's message carries it twice: ``traceparent`` in the body, and the
  ``AWSTraceHeader`` system attribute, with which X-Ray links the worker's segment to the
  sender's. The worker logs the message's ``trace_id``, not its own invocation's.
- OpenTelemetry, only when an SDK is configured (a real tracer provider is set): each task run
  gets its own span, child of the request's span context and linked to it, ended when the task
  ends. Without an SDK nothing of OpenTelemetry is imported or called.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

import structlog

from shared.ids import new_id

XRAY_ENV = "_X_AMZN_TRACE_ID"
_TRACEPARENT_HEADER = b"traceparent"
_HEX = frozenset("0123456789abcdef")


def _is_hex(value: str, length: int) -> bool:
    return len(value) == length and _HEX.issuperset(value)


class TraceContext:
    """A trace and the caller's span in it (a plain class: imported at every cold start)."""

    __slots__ = ("sampled", "span_id", "trace_id", "xray_header")

    def __init__(self, trace_id: str, span_id: str, sampled: bool = True, xray_header: str | None = None) -> None:
        self.trace_id = trace_id
        """32 lowercase hex digits."""
        self.span_id = span_id
        """The caller's span (16 hex digits): what this request's work descends from."""
        self.sampled = sampled
        self.xray_header = xray_header
        """Lambda's ``_X_AMZN_TRACE_ID`` as received, passed on unchanged as ``AWSTraceHeader``."""

    def __repr__(self) -> str:
        return f"TraceContext({self.traceparent!r})"

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    @property
    def aws_trace_header(self) -> str:
        if self.xray_header:
            return self.xray_header
        root = f"1-{self.trace_id[:8]}-{self.trace_id[8:]}"
        return f"Root={root};Parent={self.span_id};Sampled={int(self.sampled)}"


def _new_span_id() -> str:
    return new_id()[:16]


def new_trace() -> TraceContext:
    return TraceContext(new_id(), _new_span_id())


def parse_traceparent(value: str | None) -> TraceContext | None:
    """A W3C ``traceparent`` (version 00 and later); None when malformed or all zeros."""
    parts = (value or "").strip().lower().split("-")
    if len(parts) < 4 or not all(_is_hex(part, size) for part, size in zip(parts, (2, 32, 16, 2), strict=False)):
        return None
    version, trace_id, span_id, flags = parts[:4]
    if version == "ff" or (version == "00" and len(parts) != 4) or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceContext(trace_id, span_id, sampled=bool(int(flags, 16) & 1))


def parse_xray(header: str | None) -> TraceContext | None:
    """An X-Ray trace header (``Root=1-...;Parent=...;Sampled=1``); None without a valid root."""
    if not header:
        return None
    fields = dict(part.strip().split("=", 1) for part in header.split(";") if "=" in part)
    version, _, rest = fields.get("Root", "").partition("-")
    epoch, _, unique = rest.partition("-")
    if version != "1" or not (_is_hex(epoch, 8) and _is_hex(unique, 24)):
        return None
    parent = fields.get("Parent", "")
    span_id = parent if _is_hex(parent, 16) else _new_span_id()
    sampled = fields.get("Sampled", "1") != "0"
    return TraceContext(epoch + unique, span_id, sampled, xray_header=header)


def for_request(headers: list[tuple[bytes, bytes]]) -> TraceContext:
    """The trace of an HTTP request (ASGI headers): Lambda's X-Ray trace, else ``traceparent``, else new."""
    trace = parse_xray(os.environ.get(XRAY_ENV))
    if trace is not None:
        return trace
    for name, value in headers:
        if name == _TRACEPARENT_HEADER:
            trace = parse_traceparent(value.decode("latin-1"))
            break
    return trace or new_trace()


def for_scope(scope: MutableMapping[str, Any]) -> TraceContext:
    """``for_request`` for an ASGI scope, made the one OpenTelemetry continues when an SDK is configured.

    A server span already open (instrumentation outside this app) gives the trace. Otherwise the
    scope's ``traceparent`` is set to the request's trace, so that instrumentation inside (FastAPI's
    request span) continues it: the logs' ``trace_id`` is then the spans' trace id.
    """
    headers = scope.get("headers", [])
    if _sdk_tracer() is None:
        return for_request(headers)
    api, _ = _otel()
    span = api.get_current_span().get_span_context()
    if span.is_valid:
        return TraceContext(f"{span.trace_id:032x}", f"{span.span_id:016x}", span.trace_flags.sampled)
    trace = for_request(headers)
    others = [(name, value) for name, value in headers if name != _TRACEPARENT_HEADER]
    scope["headers"] = [*others, (_TRACEPARENT_HEADER, trace.traceparent.encode())]
    return trace


def for_message(traceparent: str | None, aws_trace_header: str | None) -> TraceContext:
    """The trace a task message carries: its body's ``traceparent``, else ``AWSTraceHeader``, else new."""
    return parse_traceparent(traceparent) or parse_xray(aws_trace_header) or new_trace()


_current: ContextVar[TraceContext | None] = ContextVar("shared_trace", default=None)


def current() -> TraceContext | None:
    return _current.get()


def activate(trace: TraceContext, **log_keys: Any) -> tuple[Token[TraceContext | None], Mapping[str, Any]]:
    """Make ``trace`` current and put its id (and ``log_keys``) on every log line; undo with ``deactivate``."""
    return _current.set(trace), structlog.contextvars.bind_contextvars(trace_id=trace.trace_id, **log_keys)


def deactivate(tokens: tuple[Token[TraceContext | None], Mapping[str, Any]]) -> None:
    token, bound = tokens
    structlog.contextvars.reset_contextvars(**bound)
    _current.reset(token)


@contextmanager
def active(trace: TraceContext) -> Iterator[TraceContext]:
    tokens = activate(trace)
    try:
        yield trace
    finally:
        deactivate(tokens)


# --- OpenTelemetry: a span per task run, only with an SDK configured -------------------------

_task_span: ContextVar[tuple[Any, Any] | None] = ContextVar("shared_task_span", default=None)
_ENDS = frozenset({"task.succeeded", "task.failed", "task.timed_out", "task.cancelled"})


def _otel() -> tuple[Any, Any]:
    """OpenTelemetry's ``trace`` and ``context`` modules, taken from ``sys.modules``, never imported.

    Only reached once ``_sdk_tracer`` found them loaded (``opentelemetry.trace`` imports
    ``opentelemetry.context``); no import statement, so that ``infra.sam_build``'s import scan
    does not count OpenTelemetry's namespace package (the SDK shares it in the dev venv).
    """
    return sys.modules["opentelemetry.trace"], sys.modules["opentelemetry.context"]


def _sdk_tracer() -> Any:
    """The tracer of a configured SDK, else None; imports nothing unless OpenTelemetry's API is loaded."""
    api = sys.modules.get("opentelemetry.trace")
    if api is None:
        return None
    provider = api.get_tracer_provider()
    if isinstance(provider, (api.ProxyTracerProvider, api.NoOpTracerProvider)):  # a tuple: no union built per call
        return None
    return provider.get_tracer("shared.background")


def on_task_event(event: str, fields: Mapping[str, Any]) -> None:
    """Start a span at ``task.started``, end it at the task's last event (same coroutine, same context)."""
    if event == "task.started":
        tracer = _sdk_tracer()
        if tracer is not None:
            _start_span(tracer, fields)
    elif event in _ENDS and fields.get("duration_ms") is not None:
        started = _task_span.get()
        if started is not None:
            _end_span(event, fields, *started)


def outgoing() -> TraceContext | None:
    """What a task message carries: the request's trace, its parent the current span when an SDK has one."""
    trace = current()
    if trace is None or _sdk_tracer() is None:
        return trace
    api, _ = _otel()
    span = api.get_current_span().get_span_context()
    if not span.is_valid or f"{span.trace_id:032x}" != trace.trace_id:
        return trace
    return TraceContext(trace.trace_id, f"{span.span_id:016x}", trace.sampled, trace.xray_header)


def _start_span(tracer: Any, fields: Mapping[str, Any]) -> None:
    api, otel_context = _otel()

    parent = api.get_current_span().get_span_context()
    if not parent.is_valid:
        trace = current()
        if trace is None:
            return
        parent = api.SpanContext(
            int(trace.trace_id, 16),
            int(trace.span_id, 16),
            is_remote=True,
            trace_flags=api.TraceFlags(api.TraceFlags.SAMPLED if trace.sampled else api.TraceFlags.DEFAULT),
        )
    span = tracer.start_span(
        f"task {fields.get('task')}",
        context=api.set_span_in_context(api.NonRecordingSpan(parent)),
        kind=api.SpanKind.CONSUMER,
        links=[api.Link(parent, {"link.reason": "queued by"})],
        attributes={
            "task.name": str(fields.get("task")),
            "task.id": str(fields.get("task_id")),
            "task.backend": str(fields.get("backend")),
            "task.attempt": int(fields.get("attempt", 1)),
        },
    )
    token = otel_context.attach(api.set_span_in_context(span))
    _task_span.set((span, token))


def _end_span(event: str, fields: Mapping[str, Any], span: Any, token: Any) -> None:
    api, otel_context = _otel()

    _task_span.set(None)
    otel_context.detach(token)
    if event != "task.succeeded":
        error = fields.get("exc_info")
        if isinstance(error, BaseException):
            span.record_exception(error)
        span.set_status(api.Status(api.StatusCode.ERROR, event))
    span.end()
