"""The keys Powertools for AWS Lambda's Logger adds to every line of an invocation.

Apart from ``shared.lambda_handler`` so that the SQS worker binds them too without
importing Mangum.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

_cold_start = True


def _is_cold_start() -> bool:
    """True on the first invocation of this environment, like Powertools (provisioned ones are warm)."""
    global _cold_start
    cold, _cold_start = _cold_start, False
    return cold and os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") != "provisioned-concurrency"


_CONTEXT_KEYS = (
    ("function_name", "function_name"),
    ("function_memory_size", "memory_limit_in_mb"),
    ("function_arn", "invoked_function_arn"),
    ("function_request_id", "aws_request_id"),
)


def lambda_log_keys(context: Any) -> dict[str, Any]:
    """Powertools Logger's Lambda keys, with its names, for this invocation.

    Written out rather than imported: importing any part of Powertools loads its Logger,
    Metrics and Tracer, a cold-start cost for six lines (a test compares the two). Any
    context object works (tests and harnesses pass ``{}`` or a stub): keys it lacks are absent.
    """
    keys: dict[str, Any] = {}
    for key, attribute in _CONTEXT_KEYS:
        value = getattr(context, attribute, None)
        if value is not None:
            keys[key] = value
    keys["cold_start"] = _is_cold_start()
    trace_header = os.environ.get("_X_AMZN_TRACE_ID")  # Root=1-...;Parent=...;Sampled=1
    if trace_header:
        keys["xray_trace_id"] = trace_header.split(";")[0].removeprefix("Root=")
    return keys


@contextmanager
def lambda_keys_bound(context: Any) -> Iterator[None]:
    """``lambda_log_keys(context)`` on every log line inside, the previous values back after.

    Restores with the tokens of the one binding: ``bound_contextvars`` first copies every bound
    key to find those it replaces, a cost paid before each response.
    """
    tokens = structlog.contextvars.bind_contextvars(**lambda_log_keys(context))
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
