"""The one place that decides what happens to a response's background tasks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence

from starlette.background import BackgroundTask

from shared.background.backends import Backend
from shared.background.runner import task_fields
from shared.background.task import QueuedTask, flatten
from shared.logs import get_logger
from shared.metrics import observed

log = observed(get_logger("shared.background"))

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

    def __init__(self, default: Backend, default_timeout: float | None = None) -> None:
        self.default = default
        self.default_timeout = default_timeout
        self._routes: dict[str, Backend] = {}

    def route(self, task_names: Iterable[str], backend: Backend) -> None:
        """Send the tasks named ``task_names`` (or ``"*"``: every task) to ``backend``."""
        for name in task_names:
            self._routes[name] = backend

    def backend_for(self, task: QueuedTask) -> Backend:
        return self._routes.get(task.name) or self._routes.get(ALL_TASKS) or self.default

    def take(self, background: BackgroundTask) -> BackgroundTask:
        """Check and log every task now; return what Starlette runs after the response.

        Every task is accepted before any is logged as queued, so a rejected task
        leaves nothing half-queued behind it.
        """
        groups: dict[int, tuple[Backend, list[QueuedTask]]] = {}
        routes, default_timeout = self._routes, self.default_timeout
        for starlette_task in flatten(background):
            task = QueuedTask.from_starlette(starlette_task, default_timeout)
            backend = self.backend_for(task) if routes else self.default
            backend.accept(task)
            group = groups.get(id(backend))
            if group is None:
                groups[id(backend)] = (backend, [task])
            else:
                group[1].append(task)
        plan = list(groups.values())
        for backend, tasks in plan:
            for task in tasks:
                log.info("task.queued", **task_fields(task, backend.name))
        return _AfterResponse(self.dispatch, plan)

    async def dispatch(self, plan: Plan) -> None:
        for backend, tasks in plan:
            try:
                await backend.dispatch(tasks)
            except Exception:
                # Backends log each task themselves; this only catches a broken backend.
                log.exception(
                    "task.dispatch_failed",
                    backend=backend.name,
                    task_ids=[task.task_id for task in tasks],
                )
