"""Cap request bodies while they arrive, answering 413 as JSON.

FastAPI's own ``max_body_size`` replaces the answer with a text/plain 413 whenever a
too-large ``Content-Length`` was declared; this raises an ``HTTPException`` from
``receive`` instead, so the app's usual JSON error handling answers, with the request
id. The limit is looked up per request (settings can change it without re-importing);
``shared.request_body`` applies it.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import Message, Receive


def limited_receive(receive: Receive, limit: int, declared: bytes | None) -> Receive:
    """``receive``, raising a 413 ``HTTPException`` once the body (or its declared length) exceeds ``limit``."""
    received = 0

    def too_large() -> HTTPException:
        return HTTPException(413, f"Request body is larger than the limit of {limit} bytes.")

    async def receive_within_limit() -> Message:
        nonlocal received
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large()
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large()
        return message

    return receive_within_limit
