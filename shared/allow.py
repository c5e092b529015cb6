"""405 answers whose ``Allow`` header lists every method the path supports.

Starlette answers a method no route takes with the ``Allow`` of the first route whose path
matched: ``OPTIONS /items/{id}`` said ``GET`` although ``DELETE`` is served there too.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Match


async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    detail = exc.detail if isinstance(exc, HTTPException) else "Method Not Allowed"
    return JSONResponse({"detail": detail}, status_code=405, headers={"Allow": ", ".join(sorted(methods))})
