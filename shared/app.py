"""``create_app``: the wiring every function shares, so a function's app.py holds only routes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from shared import error_bodies, pydantic_v1_check
from shared.allow import method_not_allowed
from shared.background.install import install as install_task_layer
from shared.json_body import InvalidJsonBody
from shared.logs import ensure_logging_configured
from shared.request_body import RequestBodyMiddleware
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


DEFAULT_MAX_BODY_BYTES = 1024 * 1024
"""The body cap of a function that sets none: no function reads an unbounded body."""


def create_app(
    service: str,
    *,
    max_body_bytes: int | Callable[[], int] | None = DEFAULT_MAX_BODY_BYTES,
    calls_aws: bool = False,
    track_tasks: bool | None = None,
    **fastapi_options: Any,
) -> FastAPI:
    """A FastAPI app with structured logs, request ids, the task layer and ``/health``.

    Every option of ``FastAPI(...)`` is accepted; ``routes=`` are taken over by the task
    layer like routes declared later. ``max_body_bytes`` caps request bodies (413 as JSON;
    ``None``: no cap). A JSON body must be RFC 8259 JSON (no ``NaN``, ``Infinity``, numbers
    beyond float range or lone surrogates: a 422 otherwise), and error answers never echo
    input they cannot render. ``calls_aws`` answers AWS throttling and outages with 503 and
    ``Retry-After``; only the functions that call AWS in a request pay for importing
    botocore's exceptions at cold start. Handlers in ``exception_handlers=`` win over these
    defaults, the catch-all (``Exception``/500) included. ``/health`` answers whatever
    app-wide ``dependencies=`` declare: a health check carries no credentials.
    ``track_tasks``: serve ``GET /tasks/{task_id}`` and record the tasks this function queues that are
    tracked (``@task(..., tracked=True)``, or any registered one with ``TRACK_TASKS``; docs/task-status.md);
    default: whether ``TRACK_TASKS`` is set.
    """
    ensure_logging_configured(service)
    pydantic_v1_check.install()  # before any route is declared: each one asks
    routes = fastapi_options.pop("routes", None) or []
    users_handlers = set(fastapi_options.get("exception_handlers") or {})
    fastapi_options.setdefault("title", service)
    app = FastAPI(**fastapi_options)
    root_path = get_settings().api_root_path
    if root_path:
        app.add_middleware(RootPathMiddleware, prefix=root_path)
    install_task_layer(app)
    # Where FastAPI(routes=...) puts them, first; the task layer takes them over at start-up,
    # as it does routes of included routers.
    app.router.routes[:0] = routes
    app.add_middleware(RequestBodyMiddleware, max_bytes=max_body_bytes)
    settings = get_settings()
    if settings.track_tasks if track_tasks is None else track_tasks:
        from shared import task_status  # its models and store: only a function that tracks pays at cold start

        task_status.install(app, settings)
    app.add_middleware(RequestIdMiddleware, service=service)
    if not {Exception, 500} & app.exception_handlers.keys():  # the user's own catch-all wins
        app.add_exception_handler(Exception, _unhandled_error)
    if 405 not in app.exception_handlers:
        app.add_exception_handler(405, method_not_allowed)
    for error, handler in (
        (RequestValidationError, error_bodies.request_validation_error),
        (HTTPException, error_bodies.http_error),
        (InvalidJsonBody, error_bodies.invalid_json_body),
    ):
        if error not in users_handlers:
            app.add_exception_handler(error, handler)
    if calls_aws:
        from shared.http_errors import install_aws_error_handler

        install_aws_error_handler(app)

    async def health() -> dict[str, str]:
        return {"status": "ok", "service": service}

    # As app.get() would declare it, without the app-wide dependencies (auth) app.get() adds.
    router = app.router
    route = router.route_class(
        "/health",
        health,
        methods=["GET"],
        tags=["ops"],
        response_class=router.default_response_class,
        generate_unique_id_function=router.generate_unique_id_function,
    )
    router.routes.append(route)
    return app
