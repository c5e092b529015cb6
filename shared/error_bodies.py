"""FastAPI's 422 and HTTPException answers, rendered whatever the request held.

FastAPI's own handlers echo the input (``"input"`` of a validation error, an exception's
``detail``); input that cannot be rendered as JSON (``NaN``, ``inf``, a lone surrogate,
bytes that are not UTF-8) made the error answer itself fail, as a 500. These answer as
FastAPI does whenever that renders, and otherwise the same shape with the parts that do
not render made printable (strings escaped, numbers spelled) and an unrenderable
``input`` left out: an error never echoes what it cannot render.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared.json_body import InvalidJsonBody

_RENDER_ERRORS = (ValueError, TypeError)  # UnicodeEncodeError and UnicodeDecodeError are ValueErrors


def renders(value: Any) -> bool:
    """Whether ``JSONResponse`` can render ``value`` (after FastAPI's ``jsonable_encoder``)."""
    try:
        json.dumps(jsonable_encoder(value), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except _RENDER_ERRORS:
        return False
    return True


def printable(value: Any) -> Any:
    """``value`` with every part that does not render as JSON replaced by text that does."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(printable(key)): printable(item) for key, item in value.items()}
    if isinstance(value, Sequence):
        return [printable(item) for item in value]
    if renders(value):
        return jsonable_encoder(value)
    return printable(str(value))


def printable_errors(errors: Sequence[Any]) -> list[Any]:
    """Validation errors as FastAPI renders them; an error that does not render loses its ``input``."""
    rendered: list[Any] = []
    for error in errors:
        if renders(error):
            rendered.append(jsonable_encoder(error))
        elif isinstance(error, Mapping):
            rendered.append(
                {
                    key: printable(value)
                    for key, value in error.items()
                    if key != "input" or renders(value)  # never echo what cannot be rendered
                }
            )
        else:
            rendered.append(printable(error))
    return rendered


async def request_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    try:
        return await request_validation_exception_handler(request, exc)
    except _RENDER_ERRORS:
        return JSONResponse(status_code=422, content={"detail": printable_errors(exc.errors())})


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    try:
        return await http_exception_handler(request, exc)
    except _RENDER_ERRORS:
        return JSONResponse({"detail": printable(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def invalid_json_body(request: Request, exc: Exception) -> JSONResponse:
    """A body the app read itself (``await request.json()``): FastAPI's answer to malformed JSON."""
    assert isinstance(exc, InvalidJsonBody)
    error = {"type": "json_invalid", "loc": ["body", exc.pos], "msg": "JSON decode error", "input": {}}
    return JSONResponse(status_code=422, content={"detail": [{**error, "ctx": {"error": exc.msg}}]})
