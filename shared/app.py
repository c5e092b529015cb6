"""``create_app``: the wiring every function shares, so a function's app.py holds only routes."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from shared import background
from shared.logs import ensure_logging_configured
from shared.request_id import RequestIdMiddleware
from shared.root_path import RootPathMiddleware
from shared.settings import get_settings


async def _unhandled_error(request: Request, exc: Exception) -> JSONResponse:
    """The body of an unexpected 500; RequestIdMiddleware has logged the exception."""
    request_id = request.scope.get("state", {}).get("request_id", "")
    return JSONResponse(
        status_code=500,
        content={"detail": "Internal Server Error", "request_id": request_id},
        headers={"X-Request-ID": request_id},
    )


def create_app(service: str, **fastapi_options: Any) -> FastAPI:
    """A FastAPI app with structured logs, request ids, the task layer and ``/health``."""
    ensure_logging_configured(service)
    app = FastAPI(title=service, **fastapi_options)
    root_path = get_settings().api_root_path
    if root_path:
        app.add_middleware(RootPathMiddleware, prefix=root_path)
    background.install(app)
    app.add_middleware(RequestIdMiddleware, service=service)
    app.add_exception_handler(Exception, _unhandled_error)

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": service}

    return app
