"""The app's lifespan on Lambda: startup once per execution environment, during init.

Mangum's own ``lifespan="auto"`` runs startup *and* shutdown around every invocation: a
model loaded or a client opened per request. Here startup runs once, when the handler
module is imported (Lambda's init phase, before the first invocation), on Mangum's event
loop, and what it sets (``app.state``, the state dict it yields) serves every invocation
of the environment. Shutdown runs only if the process exits normally (``atexit``: a test,
a local harness). On Lambda it does not: internal extensions get no SHUTDOWN event, and
Lambda ends the process after its last invocation.
"""

from __future__ import annotations

import atexit
import time
from typing import Any

from mangum.protocols import LifespanCycle
from mangum.types import ASGI, Receive, Scope, Send

from shared.logs import get_logger

log = get_logger("shared.lambda_lifespan")


class Lifespan:
    """Wraps the app Mangum calls: requests get a copy of the lifespan state, as uvicorn gives them."""

    def __init__(self, app: ASGI) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.started = False
        self._cycle: LifespanCycle | None = None

    def start(self) -> None:
        """Run the app's lifespan startup (once); raises ``LifespanFailure`` if it fails."""
        if self.started:
            return
        started = time.perf_counter()
        cycle = LifespanCycle(self.app, "auto")
        cycle.__enter__()
        self.state = cycle.lifespan_state
        self.started, self._cycle = True, cycle
        atexit.register(self.shutdown)
        log.info("lifespan.started", duration_ms=round((time.perf_counter() - started) * 1000, 3))

    def shutdown(self) -> None:
        """Run the app's lifespan shutdown, if startup ran (and shutdown did not)."""
        cycle, self._cycle = self._cycle, None
        if cycle is not None:
            atexit.unregister(self.shutdown)
            if cycle.loop.is_closed():  # the lifespan's task ended with its loop: nothing can run it
                log.warning("lifespan.shutdown_skipped", reason="its event loop was closed before shutdown")
                return
            cycle.__exit__(None, None, None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.state:
            scope["state"] = self.state.copy()
        await self.app(scope, receive, send)
