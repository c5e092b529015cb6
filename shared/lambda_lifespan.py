"""The app's lifespan on Lambda: startup once per execution environment, during init.

Mangum's own ``lifespan="auto"`` runs startup *and* shutdown around every invocation: a
model loaded or a client opened per request. Here startup runs once, when the handler
module is imported (Lambda's init phase, before the first invocation), on Mangum's event
loop, and what it sets (``app.state``, the state dict it yields) serves every invocation
of the environment. Shutdown runs only if the process exits normally (``atexit``: a test,
a local harness). On Lambda it does not: internal extensions get no SHUTDOWN event, and
Lambda ends the process after its last invocation.

Every invocation runs on the loop the lifespan runs on, so what startup bound to it (a
client, a lock) serves every invocation, even if ``asyncio.run`` left the thread without a
loop meanwhile (warm-up code at import, a test suite calling the handler between others).
"""

from __future__ import annotations

import asyncio
import atexit
import time
import warnings
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
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Run the app's lifespan startup once (``LifespanFailure`` if it fails); on every later
        call, make its loop this thread's current one again, where Mangum looks for it
        (``asyncio.get_event_loop``): ``asyncio.run`` leaves none when it ends."""
        if self.started:
            loop = _current_loop()
            if loop is None or loop is not self.loop or loop.is_closed():
                self._restore_loop()
            return
        started = time.perf_counter()
        self.loop = _open_loop()
        cycle = LifespanCycle(self.app, "auto")
        cycle.__enter__()
        self.state = cycle.lifespan_state
        self.started, self._cycle = True, cycle
        atexit.register(self.shutdown)
        log.info("lifespan.started", duration_ms=round((time.perf_counter() - started) * 1000, 3))

    def _restore_loop(self) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            log.warning(
                "lifespan.loop_replaced",
                reason="the event loop the lifespan started on was closed",
                consequence="what startup bound to that loop no longer works",
            )
            if loop is not None:
                _close_orphaned_tasks(loop)
            loop = self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

    def shutdown(self) -> None:
        """Run the app's lifespan shutdown, if startup ran (and shutdown did not)."""
        cycle, self._cycle = self._cycle, None
        if cycle is not None:
            atexit.unregister(self.shutdown)
            if cycle.loop.is_closed():  # the lifespan's task ended with its loop: nothing can run it
                log.warning("lifespan.shutdown_skipped", reason="its event loop was closed before shutdown")
                _close_orphaned_tasks(cycle.loop)
                return
            cycle.__exit__(None, None, None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.state:
            scope["state"] = self.state.copy()
        await self.app(scope, receive, send)


def _current_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:  # "There is no current event loop": asyncio.run unset it
        return None


def _close_orphaned_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Close the coroutines of the tasks a closed loop left pending (the lifespan's own, waiting
    for shutdown): nothing can run them again. Closed now, their cleanup runs here; left to
    the garbage collector, it fails with "Event loop is closed" in whatever code runs then."""
    for task in asyncio.all_tasks(loop):
        task.get_coro().close()


def _open_loop() -> asyncio.AbstractEventLoop:
    """This thread's event loop if it has an open one, else a new one made current."""
    with warnings.catch_warnings():  # 3.12+: "There is no current event loop", as it makes one
        warnings.simplefilter("ignore", DeprecationWarning)
        loop = _current_loop()
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
    return loop
