"""What the task layer knows about one queued task."""

from __future__ import annotations

import functools
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from starlette._utils import is_async_callable
from starlette.background import BackgroundTask as StarletteBackgroundTask
from starlette.background import BackgroundTasks as StarletteBackgroundTasks

from shared.background.registry import registered_name, task_options
from shared.ids import new_id

Job = Callable[[], Awaitable[None]]
"""Work run later with no arguments: a backend's dispatch, deferred until after the response."""


def qualified_name(func: Callable[..., Any]) -> str:
    """The stable name of a task: its registered name, else ``module.qualname``."""
    name = registered_name(func)
    if name:
        return name
    module = getattr(func, "__module__", None) or "unknown"
    qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}.{qualname}"


TASK_ID_ATTRIBUTE = "tracked_task_id"
"""Set on a Starlette ``BackgroundTask`` whose id the endpoint needs before the response (its status URL)."""

_results: OrderedDict[str, Any] = OrderedDict()
_KEPT_RESULTS = 1000
"""Results wait here from the task's return to its end (an instant); a bound, in case nothing takes them
(a tracked task queued in a process that records no status)."""


def _keep(task_id: str, result: Any) -> None:
    if result is not None:
        _results[task_id] = result
        if len(_results) > _KEPT_RESULTS:
            _results.popitem(last=False)


def _keeping_result(func: Callable[..., Any], task_id: str, is_async: bool | None) -> Callable[..., Any]:
    """``func``, keeping what it returns (not None) for ``take_result``: a tracked task's result."""
    if is_async:

        async def run_async(*args: Any, **kwargs: Any) -> None:
            _keep(task_id, await func(*args, **kwargs))

        return functools.update_wrapper(run_async, func)

    def run(*args: Any, **kwargs: Any) -> None:
        _keep(task_id, func(*args, **kwargs))

    return functools.update_wrapper(run, func)


def take_result(task_id: str) -> Any:
    """What the tracked task ``task_id`` returned (None if nothing), forgotten once taken."""
    return _results.pop(task_id, None)


_PLAIN_CALLS = frozenset({StarletteBackgroundTask.__call__})
"""A task with this ``__call__`` is run by the layer itself: its function, isolated, in a thread if sync."""


def _fastapi_tasks_call() -> Callable[..., Any] | None:
    """``fastapi.BackgroundTasks.__call__`` if FastAPI is loaded (the worker never imports it)."""
    module = sys.modules.get("fastapi.background")
    return None if module is None else module.BackgroundTasks.__call__


class QueuedTask:
    """One task given to the layer: what to call, how, and its identity.

    A plain class (not a dataclass): every function imports it at cold start, and one is
    built per task, so both its definition and its construction are kept cheap.
    """

    __slots__ = (
        "args",
        "attempt",
        "fastapi_span",
        "func",
        "is_async",
        "kwargs",
        "name",
        "origin",
        "own_call",
        "queued_at",
        "task_id",
        "timeout",
        "tracked",
    )

    def __init__(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str,
        task_id: str | None = None,
        attempt: int = 1,
        timeout: float | None = None,
        is_async: bool | None = None,
        own_call: Callable[[], Awaitable[None]] | None = None,
        fastapi_span: bool = False,
        tracked: bool = False,
        queued_at: float | None = None,
    ) -> None:
        self.args = args
        self.kwargs = kwargs
        self.name = name
        self.task_id: str = new_id() if task_id is None else task_id
        self.attempt = attempt
        self.timeout = timeout
        self.is_async: bool = is_async_callable(func) if is_async is None else is_async
        self.own_call = own_call
        """A ``BackgroundTask`` subclass's own ``__call__``: run instead of ``func``, as Starlette would."""
        self.fastapi_span = fastapi_span
        """Queued through FastAPI's ``BackgroundTasks``: run inside its ``fastapi.background_task`` span."""
        self.tracked = tracked
        """Its status is recorded for the client (``shared.background.status_store``); what it returns is kept."""
        self.origin = func
        """The function queued (``func`` is a wrapper keeping its result when the task is tracked)."""
        self.func = _keeping_result(func, self.task_id, self.is_async) if tracked and own_call is None else func
        self.queued_at: float = time.monotonic() if queued_at is None else queued_at
        """When it was queued (``time.monotonic``): its terminal line's ``wait_ms`` counts from here."""

    def __repr__(self) -> str:
        return (
            f"QueuedTask(name={self.name!r}, task_id={self.task_id!r}, attempt={self.attempt}, "
            f"timeout={self.timeout!r}, tracked={self.tracked})"
        )

    @classmethod
    def from_starlette(
        cls,
        task: StarletteBackgroundTask,
        default_timeout: float | None = None,
        *,
        fastapi_span: bool = False,
        track_registered: bool = False,
    ) -> QueuedTask:
        """``track_registered`` (``TRACK_TASKS``): every registered task is tracked, not only ``tracked=True`` ones.

        An id given in advance (``shared.task_status.track``: the endpoint put its URL in its body) is kept.
        """
        func = task.func
        options = task_options(func)
        timeout = options.timeout if options.timeout is not None else default_timeout
        own_call = None if type(task).__call__ in _PLAIN_CALLS else task.__call__
        given_id = getattr(task, TASK_ID_ATTRIBUTE, None)
        return cls(
            func,
            tuple(task.args),
            dict(task.kwargs),
            options.name or qualified_name(func),
            **({"task_id": given_id} if given_id else {}),
            timeout=timeout,
            is_async=task.is_async,
            own_call=own_call,
            fastapi_span=fastapi_span,
            tracked=options.tracked or (track_registered and options.name is not None) or given_id is not None,
        )


def flatten(background: StarletteBackgroundTask) -> list[tuple[StarletteBackgroundTask, bool]]:
    """A response's ``background``: one task, or a ``BackgroundTasks`` holding many, each with
    whether FastAPI's ``BackgroundTasks`` holds it (its telemetry span). A container with a
    ``__call__`` of its own is one task: only its ``__call__`` knows how to run what it holds."""
    nested = getattr(background, "tasks", None)
    call = type(background).__call__
    fastapi_call = _fastapi_tasks_call()
    if nested is None or (call is not StarletteBackgroundTasks.__call__ and call is not fastapi_call):
        return [(background, False)]
    span = call is fastapi_call
    if all(type(task) is StarletteBackgroundTask for task in nested):  # what add_task makes: nothing nested
        return [(task, span) for task in nested]
    return [(leaf, span or inner_span) for task in nested for leaf, inner_span in flatten(task)]
