"""Error answers shared by the functions: one JSON shape, documented in OpenAPI."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as AwsConnectionError
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

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

    A handler the app already has for either exception (its own) is kept.
    """
    for error in (BotoCoreError, ClientError):
        if error not in app.exception_handlers:
            app.add_exception_handler(error, _aws_error)
