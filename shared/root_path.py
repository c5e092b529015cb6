"""Serve an app behind a path prefix that the proxy in front does not strip."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

RESOLVED = "shared.root_path_resolved"
"""Scope key: the Lambda handler worked the root path out from the event (``shared.lambda_paths``)."""


class RootPathMiddleware:
    """Serve an app behind a path prefix that the proxy does not strip (the HTTP API's ``/<name>``).

    A request under ``prefix`` gets it as its ASGI ``root_path``, as a ``Mount`` would give
    it: Starlette routes on the rest of the path, and FastAPI's ``/docs`` and OpenAPI
    ``servers`` point back under the prefix. Other requests are served as they come.

    On Lambda, ``make_handler`` knows better: the event says which route matched and
    under which stage (``shared.lambda_paths``), so requests it resolved pass untouched.
    """

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = "/" + prefix.strip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not scope.get("root_path") and RESOLVED not in scope:
            path: str = scope["path"]
            if path == self.prefix or path.startswith(self.prefix + "/"):
                scope = {**scope, "root_path": self.prefix}
        await self.app(scope, receive, send)
