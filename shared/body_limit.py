"""Cap request bodies while they arrive, answering 413 as JSON.

FastAPI's own ``max_body_size`` replaces the answer with a text/plain 413 whenever a
too-large ``Content-Length`` was declared; this raises an ``HTTPException`` from
``receive`` instead, so the app's usual JSON error handling answers, with the request
id. The limit is looked up per request (settings can change it without re-importing).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int | Callable[[], int]) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def limit(self) -> int:
        return self.max_bytes() if callable(self.max_bytes) else self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        declared = Headers(scope=scope).get("content-length", "")
        received = 0

        def too_large() -> HTTPException:
            return HTTPException(413, f"Request body is larger than the limit of {limit} bytes.")

        async def receive_within_limit() -> Message:
            nonlocal received
            if declared.isdigit() and int(declared) > limit:
                raise too_large()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large()
            return message

        await self.app(scope, receive_within_limit, send)
