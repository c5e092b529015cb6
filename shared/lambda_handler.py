"""The Lambda entry point of a function: Mangum over the same FastAPI app.

Mangum turns each event shape (API Gateway REST v1, HTTP API v2, Function URL,
ALB) into an ASGI request. Around it, per invocation, this module:

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

import os
from typing import Any

import structlog
from mangum import Mangum
from mangum.types import ASGI, LambdaContext

from shared.background import handoff
from shared.background.lambda_extension import LambdaExtensionBackend
from shared.logs import get_logger
from shared.settings import running_on_lambda

log = get_logger("shared.lambda")

SUPPORTED_EVENTS = "API Gateway REST (v1) or HTTP API (v2), a Lambda Function URL or an Application Load Balancer"

_cold_start = True


class InvalidEventError(ValueError):
    """The event is not an HTTP request this function can serve."""


def _is_cold_start() -> bool:
    """True on the first invocation of this environment, like Powertools (provisioned ones are warm)."""
    global _cold_start
    cold, _cold_start = _cold_start, False
    return cold and os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") != "provisioned-concurrency"


def lambda_log_keys(context: LambdaContext) -> dict[str, Any]:
    """Powertools Logger's Lambda keys, with its names, for this invocation.

    Written out rather than imported: importing any part of Powertools loads its Logger,
    Metrics and Tracer, a cold-start cost for six lines (a test compares the two).
    """
    keys: dict[str, Any] = {
        "function_name": context.function_name,
        "function_memory_size": context.memory_limit_in_mb,
        "function_arn": context.invoked_function_arn,
        "function_request_id": context.aws_request_id,
        "cold_start": _is_cold_start(),
    }
    trace_header = os.environ.get("_X_AMZN_TRACE_ID")  # Root=1-...;Parent=...;Sampled=1
    if trace_header:
        keys["xray_trace_id"] = trace_header.split(";")[0].removeprefix("Root=")
    return keys


class LambdaHandler:
    """``handler(event, context)`` for Lambda; build it with ``make_handler(app)``."""

    reports_invocations = True  # what the lambda-extension backend looks for on the entry point

    def __init__(self, app: ASGI, **mangum_options: Any) -> None:
        # lifespan="off": Mangum would run startup and shutdown around every invocation.
        self.adapter = Mangum(app, lifespan="off", **mangum_options)
        LambdaExtensionBackend.track_invocations()
        if running_on_lambda():  # the INIT line; a server logs its own at start-up
            handoff.current().log_ready()  # built at the end of the app's module: its tasks are registered

    def __call__(self, event: Any, context: LambdaContext) -> dict[str, Any]:
        with (
            structlog.contextvars.bound_contextvars(**lambda_log_keys(context)),
            LambdaExtensionBackend.invocation(context.aws_request_id, context.get_remaining_time_in_millis()),
        ):
            self.check_event(event, context)
            response: dict[str, Any] = self.adapter(event, context)
            return response

    def check_event(self, event: Any, context: LambdaContext) -> None:
        """Raise ``InvalidEventError`` (and log it) unless Mangum can serve ``event``."""
        if not isinstance(event, dict):
            problem = f"the event is a JSON {type(event).__name__}, not an object"
            keys: list[str] = []
        else:
            keys = sorted(str(key) for key in event)[:30]
            try:
                adapter = self.adapter.infer(event, context)
            except RuntimeError:
                problem = f"no known event shape has these top-level keys: {keys}"
            else:
                try:
                    adapter.scope  # noqa: B018 - building the scope and body reads every field Mangum needs
                    adapter.body  # noqa: B018
                    return
                except Exception as exc:
                    problem = f"malformed {type(adapter).__name__} event: {type(exc).__name__}: {exc}"
        message = f"Unsupported event: this function serves HTTP requests from {SUPPORTED_EVENTS} ({problem})"
        log.error("lambda.invalid_event", error=message, event_keys=keys)
        raise InvalidEventError(message)


def make_handler(app: ASGI, **mangum_options: Any) -> LambdaHandler:
    """The Lambda entry point over ``app`` (``mangum_options``: e.g. ``api_gateway_base_path``)."""
    return LambdaHandler(app, **mangum_options)
