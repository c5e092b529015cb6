"""Where a request's tasks go once its response has been sent.

A backend is anything with a ``name``, an ``accept`` check run before the response
leaves (so a task that cannot be queued fails the request loudly, not later), and a
``dispatch`` coroutine run after the response body has been sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shared.background.runner import run_tasks
from shared.background.task import QueuedTask


class TaskRejected(Exception):
    """A task cannot be queued as given (bad arguments, unknown name, too large)."""


class Backend(Protocol):
    @property
    def name(self) -> str:
        """The ``backend`` of the task lines: where and when the tasks run."""

    def accept(self, task: QueuedTask) -> None:
        """Raise TaskRejected when ``task`` cannot be queued."""

    async def dispatch(self, tasks: Sequence[QueuedTask]) -> None:
        """Take over ``tasks``; called once per request, after its response was sent."""


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
