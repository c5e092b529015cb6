"""The Lambda entry point of a function: Mangum over the same FastAPI app.

Mangum turns each event shape (API Gateway REST v1, HTTP API v2, Function URL,
ALB) into an ASGI request, with the path the client used (``shared.lambda_paths``).
The app's lifespan startup runs once per environment, at init (``shared.lambda_lifespan``).
Around Mangum, per invocation, this module:

- binds the keys Powertools Logger emits (``function_name``, ``function_memory_size``,
  ``function_arn``, ``function_request_id``, ``cold_start``, ``xray_trace_id``) to every
  log line of the invocation, its background tasks included;
- tells the ``lambda-extension`` backend when the handler returned, so the tasks run
  after the response and before the environment is frozen;
- refuses an event that is not an HTTP request with ``InvalidEventError``: Lambda
  reports it as a function error (console, ``sam local invoke``, the ``Errors`` metric,
  retries and on-failure destinations of async invokes) while the environment keeps
  serving. A success-shaped 400 would make a misrouted async event vanish silently.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from mangum import Mangum
from mangum.protocols.http import HTTPCycle
from mangum.types import ASGI
from mangum.types import LambdaHandler as EventShape

from shared import metrics
from shared.background import handoff
from shared.background.lambda_extension import LambdaExtensionBackend
from shared.lambda_keys import lambda_keys_bound
from shared.lambda_lifespan import Lifespan
from shared.lambda_paths import HANDLERS
from shared.logs import get_logger
from shared.settings import running_on_lambda

log = get_logger("shared.lambda")

SUPPORTED_EVENTS = "API Gateway REST (v1) or HTTP API (v2), a Lambda Function URL or an Application Load Balancer"


class InvalidEventError(ValueError):
    """The event is not an HTTP request this function can serve."""


def _invocation(context: Any) -> AbstractContextManager[None]:
    """Report the invocation to the lambda-extension backend; a context without an id cannot be.

    The context is asked for the time left only when a backend takes it (on Lambda): test
    contexts off Lambda need not implement ``get_remaining_time_in_millis`` (Mangum's do not).
    """
    request_id = getattr(context, "aws_request_id", None)
    if not isinstance(request_id, str) or LambdaExtensionBackend._instance is None:
        return nullcontext()
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return LambdaExtensionBackend.invocation(request_id, remaining() if callable(remaining) else None)


class LambdaHandler:
    """``handler(event, context)`` for Lambda; build it with ``make_handler(app)``."""

    reports_invocations = True  # what the lambda-extension backend looks for on the entry point

    def __init__(self, app: ASGI, **mangum_options: Any) -> None:
        # lifespan="off": Mangum would run startup and shutdown around every invocation;
        # Lifespan runs startup once, at init on Lambda (else at the first call).
        # custom_handlers: Mangum's own, with the root path each event shape implies.
        self.lifespan = Lifespan(app)
        handlers = [*(mangum_options.pop("custom_handlers", None) or []), *HANDLERS]
        self.adapter = Mangum(self.lifespan, lifespan="off", custom_handlers=handlers, **mangum_options)
        if running_on_lambda():  # the INIT line; a server logs its own at start-up
            self.lifespan.start()
            handoff.current().log_ready()  # built at the end of the app's module: its tasks are registered

    def __call__(self, event: Any, context: Any) -> dict[str, Any]:
        self.lifespan.start()
        with (
            metrics.invocation(),
            lambda_keys_bound(context),
            _invocation(context),
        ):
            # Mangum's own __call__ (lifespan="off"), on the event shape check_event already read.
            shape = self.check_event(event, context)
            response: dict[str, Any] = shape(HTTPCycle(shape.scope, shape.body)(self.adapter.app))
            return response

    def check_event(self, event: Any, context: Any) -> EventShape:
        """Mangum's reading of ``event``; raise ``InvalidEventError`` (and log it) unless it can serve it."""
        if not isinstance(event, dict):
            problem = f"the event is a JSON {type(event).__name__}, not an object"
        else:
            try:
                adapter = self.adapter.infer(event, context)
            except RuntimeError:
                problem = f"no known event shape has these top-level keys: {_top_keys(event)}"
            else:
                try:
                    adapter.scope  # noqa: B018 - building the scope and body reads every field Mangum needs
                    adapter.body  # noqa: B018
                    return adapter
                except Exception as exc:
                    mangum_class = (c for c in type(adapter).__mro__ if c.__module__.startswith("mangum."))
                    shape = next(mangum_class, type(adapter)).__name__
                    problem = f"malformed {shape} event: {type(exc).__name__}: {exc}"
        message = f"Unsupported event: this function serves HTTP requests from {SUPPORTED_EVENTS} ({problem})"
        log.error("lambda.invalid_event", error=message, event_keys=_top_keys(event))
        raise InvalidEventError(message)


def _top_keys(event: Any) -> list[str]:
    """An event's first 30 top-level keys, sorted, for a refusal (only a refusal reads them)."""
    return sorted(str(key) for key in event)[:30] if isinstance(event, dict) else []


def make_handler(app: ASGI, **mangum_options: Any) -> LambdaHandler:
    """The Lambda entry point over ``app`` (``mangum_options``: e.g. ``api_gateway_base_path``)."""
    return LambdaHandler(app, **mangum_options)
