"""Give every request an id, bind it to every log line, and echo it to the client."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import tracing
from shared.ids import new_id
from shared.logs import get_logger, mask_emails

HEADER = "x-request-id"
_HEADER_BYTES = HEADER.encode()
_WELL_FORMED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")

log = get_logger("shared.request")


def _from_header(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == _HEADER_BYTES:
            candidate = value.decode("latin-1").strip()
            return candidate if _WELL_FORMED.fullmatch(candidate) else None
    return None


def _from_api_gateway(scope: Scope) -> str | None:
    """Mangum puts the Lambda event in the scope; API Gateway and URLs carry a request id."""
    event: Any = scope.get("aws.event")
    if not event:
        return None
    request_id = (event.get("requestContext") or {}).get("requestId")
    return request_id if isinstance(request_id, str) and request_id else None


def _where(scope: Scope) -> dict[str, str]:
    """The route's template (``/send-notification/{email}``): no e-mail in the logs, few distinct values.

    Only a request that matched no route logs its path, e-mail addresses masked. A route
    of an included router is logged with the router's prefixes (FastAPI keeps that
    effective route in its own scope entry; ``scope["route"]`` is the router's own).
    """
    included = scope.get("fastapi", {}).get("effective_route_context")
    route = getattr(included, "path", None) or getattr(scope.get("route"), "path", None)
    return {"route": route} if route else {"path": mask_emails(scope["path"])}


def resolve_request_id(scope: Scope) -> str:
    return _from_header(scope) or _from_api_gateway(scope) or new_id()


class RequestIdMiddleware:
    """Pure ASGI, so the id stays bound while the response's background tasks run."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = resolve_request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        echoed = (_HEADER_BYTES, request_id.encode())
        status = 500
        response_started = False
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            kind = message["type"]
            if kind == "http.response.start":
                status, response_started = message["status"], True
                headers = [header for header in message.get("headers", ()) if header[0].lower() != _HEADER_BYTES]
                headers.append(echoed)
                await send({**message, "headers": headers})
                return
            await send(message)
            if kind == "http.response.body" and not message.get("more_body", False):
                log.info(
                    "request.completed",
                    method=scope["method"],
                    **_where(scope),
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 3),
                )

        # One binding for the request's log keys and its trace: fewer context variable writes per request.
        bound = tracing.activate(tracing.for_scope(scope), request_id=request_id, service=self.service)
        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or not task.cancelling():
                raise  # not a cancellation of this request from outside
            task.uncancel()  # the server's, whose last word this is: see _cut
            await self._cut(scope, send, echoed, status if response_started else None, started, str(exc))
        except Exception as exc:
            # Logged here, where the request's context is still bound; Starlette's
            # outermost ServerErrorMiddleware then answers with shared.app's JSON 500.
            log.error("request.failed", exc_info=exc)
            raise
        finally:
            tracing.deactivate(bound)

    @staticmethod
    async def _cut(
        scope: Scope, send: Send, echoed: tuple[bytes, bytes], status: int | None, started: float, reason: str
    ) -> None:
        """The server cancelled the request: uvicorn does when its shutdown grace runs out.

        One warning says so, no traceback: the stop is expected, and its tasks' lines tell what
        was lost. Raised further, uvicorn would log "Exception in ASGI application" at error
        with the traceback. A request not answered yet gets a 503 (uvicorn would send a 500).
        """
        log.warning(
            "request.cut",
            method=scope["method"],
            **_where(scope),
            status=status or 503,
            response_sent=status is not None,
            reason=reason or "the server cancelled the request",
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        if status is None:
            body = b'{"detail":"The server is shutting down; retry the request."}'
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
                echoed,
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
