"""Error answers shared by the functions: one JSON shape, documented in OpenAPI."""

from __future__ import annotations

import functools
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.middleware.exceptions import ExceptionMiddleware

from shared import aws
from shared.logs import get_logger

log = get_logger("shared.http")

_DESCRIPTIONS = {
    400: "Malformed request body",
    404: "Not found",
    409: "Conflict with an existing resource",
    413: "Content too large",
    415: "Unsupported media type",
    502: "An AWS service answered with an error",
    503: "A storage service is unavailable; retry later",
}
_RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "Throttling",
        "SlowDown",
        "ServiceUnavailable",
        "InternalServerError",
        "InternalError",
    }
)


class ErrorMessage(BaseModel):
    detail: str


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a path operation: each code answers ``{"detail": "..."}``."""
    return {code: {"model": ErrorMessage, "description": _DESCRIPTIONS.get(code, "Error")} for code in codes}


def _is_unavailable(exc: Exception) -> bool:
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as AwsConnectionError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in _RETRYABLE_CODES or status >= 500
    return isinstance(exc, (AwsConnectionError, HTTPClientError))


async def _aws_error(request: Request, exc: Exception) -> JSONResponse:
    if not _is_unavailable(exc):
        raise exc
    log.error("request.aws_unavailable", error_type=type(exc).__qualname__, error=str(exc))
    return JSONResponse(
        status_code=503,
        content={"detail": "A storage service is unavailable; retry later."},
        headers={"Retry-After": "1"},
    )


def install_aws_error_handler(app: FastAPI) -> None:
    """AWS throttling and outages answer 503 with Retry-After; other AWS errors stay 500s.

    The handlers are added once botocore is loaded (``shared.aws``: with the first client, or
    now if something imported it already): a cold start that calls no AWS never imports it.
    A handler the app already has for either exception (its own) is kept.
    """
    aws.when_sdk_loaded(functools.partial(_add_aws_error_handlers, app))


def _add_aws_error_handlers(app: FastAPI) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    added = [error for error in (BotoCoreError, ClientError) if error not in app.exception_handlers]
    for error in added:
        app.add_exception_handler(error, _aws_error)
    if app.middleware_stack is None or not added:
        return
    # A request made the first client: the app's middleware stack, built by its first request,
    # holds a copy of the handlers in its ExceptionMiddleware, which takes these ones too.
    layer: Any = app.middleware_stack
    while layer is not None and not isinstance(layer, ExceptionMiddleware):
        layer = getattr(layer, "app", None)
    if layer is None:
        log.error(
            "request.aws_error_handler_missing",
            consequence="AWS throttling and outages answer 500, not 503: a middleware hides the app's "
            "ExceptionMiddleware (no .app attribute); import botocore before create_app() to register early",
        )
        return
    for error in added:
        layer.add_exception_handler(error, app.exception_handlers[error])
