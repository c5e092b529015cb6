"""Serve an app behind a path prefix that the proxy in front does not strip."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class RootPathMiddleware:
    """Serve an app behind a path prefix that the proxy does not strip (the HTTP API's ``/<name>``).

    A request under ``prefix`` gets it as its ASGI ``root_path``, as a ``Mount`` would give
    it: Starlette routes on the rest of the path, and FastAPI's ``/docs`` and OpenAPI
    ``servers`` point back under the prefix. Other requests (a Function URL, a direct
    invoke with an event of the app's own paths) are served as they come.
    """

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = "/" + prefix.strip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not scope.get("root_path"):
            path: str = scope["path"]
            if path == self.prefix or path.startswith(self.prefix + "/"):
                scope = {**scope, "root_path": self.prefix}
        await self.app(scope, receive, send)
