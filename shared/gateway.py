"""Every function in one ASGI app, each under ``/<name>``, as the HTTP API routes them.

``python -m shared.serve all`` serves it: the image's default command and ``make run``.
One port with the deployed API's paths (``/users/users``, ``/notifications/docs``), so a
URL that works locally works against the stack's ``ApiUrl`` too. Each function stays its
own FastAPI app (its middleware, task executor, ``/health`` and ``/docs``); Starlette's
``Mount`` gives it the ``root_path`` the API's prefix stripping gives it on Lambda.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.allow import method_not_allowed
from shared.background.routing import manage_routes
from shared.logs import ensure_logging_configured
from shared.metrics.prometheus import metrics_endpoint, require_shared_values
from shared.request_id import RequestIdMiddleware

FUNCTIONS_DIR = Path(__file__).resolve().parents[1] / "functions"


class _OwnRouter:
    """Let a mounted app resolve ``request.url_for`` with its own routes, as it does alone.

    Starlette keeps the outermost router in ``scope["router"]`` and builds URLs from the
    outermost app's root; here the function's router and its mount point take their place.
    The ``Mount`` is no route of the function either: a path it does not serve is logged as
    an unmatched path, as the function alone logs it, not as ``"route": "/<name>"``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope = {key: value for key, value in scope.items() if key not in ("router", "route")}
        scope["app_root_path"] = scope.get("root_path", "")
        await self.app(scope, receive, send)


def _mount(path: str, app: ASGIApp, name: str | None = None) -> Mount:
    """A ``Mount`` whose path may hold any character: Starlette's ``.*`` stops at a newline
    (``%0A``), which sent such a path to the gateway's 404 instead of its function."""
    mount = Mount(path, app=app, name=name)
    mount.path_regex = re.compile(mount.path_regex.pattern, re.DOTALL)
    return mount


def function_names() -> list[str]:
    """Every ``functions/<name>/app.py``: adding a folder adds a function everywhere."""
    return sorted(path.parent.name for path in FUNCTIONS_DIR.glob("*/app.py"))


def load_apps(names: Sequence[str] | None = None) -> dict[str, FastAPI]:
    apps: dict[str, FastAPI] = {}
    for name in names if names is not None else function_names():
        app = getattr(importlib.import_module(f"functions.{name}.app"), "app", None)
        if not isinstance(app, FastAPI):
            raise TypeError(f"functions/{name}/app.py must expose `app`, a FastAPI application")
        apps[name] = app
    return apps


def create_gateway(apps: Mapping[str, FastAPI] | None = None) -> Starlette:
    """One app mounting ``apps`` (default: every function), running each one's lifespan.

    Each app's routes get the task layer at startup, as when the app is served alone: a
    route that cannot be managed stops the gateway from starting.
    """
    ensure_logging_configured("gateway")  # before the functions claim the server's own log lines
    require_shared_values()
    mounted = dict(apps) if apps is not None else load_apps()

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for app in mounted.values():
                manage_routes(app.router.routes)  # as the app does when it starts alone
                await stack.enter_async_context(app.router.lifespan_context(app))
            yield

    async def index(request: Request) -> JSONResponse:
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {name: {"url": f"{base}/{name}", "docs": f"{base}/{name}/docs"} for name in mounted},
        )

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "functions": sorted(mounted)})

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        detail = f"No function serves {request.url.path}; functions: {', '.join(f'/{name}' for name in mounted)}"
        return JSONResponse({"detail": detail}, status_code=404)

    # The gateway's own paths, its 404s and 405s included (JSON), get request ids and request.completed lines
    # as a function's do; a function's paths get them from the function alone.
    own = Starlette(
        routes=[Route("/", index), Route("/health", health), Route("/metrics", metrics_endpoint)],
        exception_handlers={404: not_found, 405: method_not_allowed},
    )
    routes: list[BaseRoute] = [_mount(f"/{name}", _OwnRouter(app), name) for name, app in mounted.items()]
    routes.append(_mount("", RequestIdMiddleware(own, service="gateway")))
    return Starlette(routes=routes, lifespan=lifespan)
