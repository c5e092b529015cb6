"""The ``inline`` backend: a request's tasks run in this process, right after its response."""

from __future__ import annotations

from collections.abc import Sequence

from shared.background.runner import run_tasks
from shared.background.task import QueuedTask


class InlineBackend:
    """Runs the tasks in this process, on this event loop, right after the response.

    Under uvicorn this is the request's own ASGI task, so a SIGTERM waits for it
    (``--timeout-graceful-shutdown``) before the process exits.
    """

    name = "inline"

    def accept(self, task: QueuedTask) -> None:
        return None

    async def dispatch(self, tasks: Sequence[QueuedTask]) -> None:
        await run_tasks(tasks, self.name)
