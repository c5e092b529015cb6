"""The one place that decides what happens to a response's background tasks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence

from starlette.background import BackgroundTask

from shared.background import lifecycle
from shared.background.errors import TaskRejected
from shared.background.lifecycle import task_fields
from shared.background.protocols import Backend
from shared.background.task import QueuedTask, flatten

Plan = Sequence[tuple[Backend, Sequence[QueuedTask]]]

ALL_TASKS = "*"


class _AfterResponse(BackgroundTask):
    """What Starlette awaits after the response: the executor's dispatch of one request's plan.

    Known to be a coroutine function: Starlette's constructor would inspect it on every request.
    """

    def __init__(self, dispatch: Callable[[Plan], Awaitable[None]], plan: Plan) -> None:
        self.dispatch, self.plan, self.is_async = dispatch, plan, True

    async def __call__(self) -> None:
        await self.dispatch(self.plan)


class TaskExecutor:
    """Routes each task to a backend by its name; unrouted tasks go to ``default``."""

    def __init__(
        self, default: Backend, default_timeout: float | None = None, *, track_registered: bool = False
    ) -> None:
        self.default = default
        self.default_timeout = default_timeout
        self.track_registered = track_registered
        self._routes: dict[str, Backend] = {}

    def route(self, task_names: Iterable[str], backend: Backend) -> None:
        """Send the tasks named ``task_names`` (or ``"*"``: every task) to ``backend``."""
        for name in task_names:
            self._routes[name] = backend

    def backend_for(self, task: QueuedTask) -> Backend:
        return self._routes.get(task.name) or self._routes.get(ALL_TASKS) or self.default

    def take(self, background: BackgroundTask) -> BackgroundTask:
        """Check and log every task now; return what Starlette runs after the response.

        Every task is checked before any is accepted (``task.queued``), so a refused task
        (``task.rejected``, then TaskRejected for the route's error response) leaves nothing
        half-queued behind it.
        """
        groups: dict[int, tuple[Backend, list[QueuedTask]]] = {}
        routes, default_timeout, track = self._routes, self.default_timeout, self.track_registered
        for starlette_task, fastapi_span in flatten(background):
            task = QueuedTask.from_starlette(
                starlette_task, default_timeout, fastapi_span=fastapi_span, track_registered=track
            )
            backend = self.backend_for(task) if routes else self.default
            try:
                backend.accept(task)
            except TaskRejected as exc:
                level = "warning" if exc.client_input else "error"
                lifecycle.end("task.rejected", task_fields(task, backend.name), level=level, error=str(exc))
                raise
            group = groups.get(id(backend))
            if group is None:
                groups[id(backend)] = (backend, [task])
            else:
                group[1].append(task)
        plan = list(groups.values())
        for backend, tasks in plan:
            for task in tasks:
                lifecycle.accept(task, backend.name)
        return _AfterResponse(self.dispatch, plan)

    async def dispatch(self, plan: Plan) -> None:
        for backend, tasks in plan:
            try:
                await backend.dispatch(tasks)
            except Exception as exc:
                # Backends end each task themselves; a broken backend's tasks end here, not nowhere.
                for task in tasks:
                    if lifecycle.is_open(task.task_id):
                        lifecycle.end(
                            "task.lost",
                            task_fields(task, backend.name),
                            level="error",
                            reason="dispatch_failed",
                            exc_info=exc,
                        )
