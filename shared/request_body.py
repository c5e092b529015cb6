"""A request body's two checks in one pure ASGI layer: its size (``body_limit``) and strict JSON (``json_body``).

One layer reads the request's headers once, without building a ``Headers`` object, and wraps
``receive`` only with the checks the request needs: the JSON check only for a JSON content type.
A request whose body the app never reads (most GETs, the tutorial's POST) pays for a header scan.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from shared.body_limit import limited_receive
from shared.json_body import checked_receive, is_json_content_type


class RequestBodyMiddleware:
    """``max_bytes`` caps the body (413 as JSON; a callable is asked per request; None: no cap)."""

    def __init__(self, app: ASGIApp, max_bytes: int | Callable[[], int] | None) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            content_type = declared = None
            for name, value in scope["headers"]:
                if name == b"content-type":
                    content_type = content_type or value
                elif name == b"content-length":
                    declared = declared or value
            max_bytes = self.max_bytes
            if max_bytes is not None:
                receive = limited_receive(receive, max_bytes() if callable(max_bytes) else max_bytes, declared)
            if content_type is not None and is_json_content_type(content_type.decode("latin-1")):
                receive = checked_receive(receive)
        await self.app(scope, receive, send)
