"""The task layer's seams: what a backend, a sender and a deadline watch must do.

Implementations sit above this module (``inline``, ``lambda_extension``, ``sqs``); the runner,
the handoff and the executor only know these protocols.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from shared.background.task import Job, QueuedTask


class Backend(Protocol):
    @property
    def name(self) -> str:
        """The ``backend`` of the task lines: where and when the tasks run."""

    def accept(self, task: QueuedTask) -> None:
        """Raise TaskRejected when ``task`` cannot be queued."""

    async def dispatch(self, tasks: Sequence[QueuedTask]) -> None:
        """Take over ``tasks``; called once per request, after its response was sent."""


class Sender(Protocol):
    """What the handoff needs of the durable queue (``shared.background.sqs.SqsBackend``)."""

    def accept(self, task: QueuedTask) -> None:
        """Raise TaskRejected when ``task`` cannot be sent."""

    def warm_up(self, *, connect: bool = False) -> None:
        """Create the client now (a few hundred ms), so that the first send does not pay for it.

        ``connect``: also make a first request that changes nothing, so that the first send pays
        neither the connection (TCP, TLS) nor the client's first-request work either.
        """

    async def send_now(self, tasks: Sequence[QueuedTask], message_ids: dict[str, str]) -> None:
        """Send ``tasks``; ``message_ids`` gets each taken task's message id, by task id."""


class Deferrer(Protocol):
    """Runs ``job`` later; on Lambda ``LambdaExtensionBackend.defer``: after the response, before the freeze."""

    def __call__(self, job: Job, *, label: str = ...) -> Awaitable[None]: ...


class DeadlineWatch(Protocol):
    """Runs a sync task on the calling thread: past ``deadline``, something else must end the process."""

    def watch(self, deadline: float | None, on_expiry: Callable[[], str]) -> AbstractContextManager[None]:
        """While the block runs, at ``deadline``: call ``on_expiry`` (it logs, and says why), then exit."""


class TaskObserver(Protocol):
    """Told of each step of a **tracked** task by the lifecycle (``shared.background.status_store``).

    Called on the thread that logs the step; it must never raise (a status write that fails is
    the observer's to report) and must not be slow: ``accepted`` runs before the response.
    """

    def accepted(self, fields: dict[str, Any]) -> None:
        """``task.queued``: the task was accepted (before the response)."""

    def started(self, fields: dict[str, Any], *, on_worker: bool) -> None:
        """``task.started``: a run of it begins (``on_worker``: a worker's receive of its message)."""

    def ended(self, event: str, fields: dict[str, Any], extra: dict[str, Any], *, on_worker: bool) -> None:
        """A terminal ``event`` (``events.TERMINAL``, or ``task.dead_lettered`` on the worker)."""
