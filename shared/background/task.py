"""What the task layer knows about one queued task."""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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


_PLAIN_CALLS = frozenset({StarletteBackgroundTask.__call__})
"""A task with this ``__call__`` is run by the layer itself: its function, isolated, in a thread if sync."""


def _fastapi_tasks_call() -> Callable[..., Any] | None:
    """``fastapi.BackgroundTasks.__call__`` if FastAPI is loaded (the worker never imports it)."""
    module = sys.modules.get("fastapi.background")
    return None if module is None else module.BackgroundTasks.__call__


@dataclass
class QueuedTask:
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    name: str
    task_id: str = field(default_factory=new_id)
    attempt: int = 1
    timeout: float | None = None
    is_async: bool | None = None  # None: worked out from ``func`` (Starlette's tasks know already)
    own_call: Callable[[], Awaitable[None]] | None = None
    """A ``BackgroundTask`` subclass's own ``__call__``: run instead of ``func``, as Starlette would."""
    fastapi_span: bool = False
    """Queued through FastAPI's ``BackgroundTasks``: run inside its ``fastapi.background_task`` span."""
    queued_at: float = field(default_factory=time.monotonic)
    """When it was queued (``time.monotonic``): its terminal line's ``wait_ms`` counts from here."""

    def __post_init__(self) -> None:
        if self.is_async is None:
            self.is_async = is_async_callable(self.func)

    @classmethod
    def from_starlette(
        cls, task: StarletteBackgroundTask, default_timeout: float | None = None, *, fastapi_span: bool = False
    ) -> QueuedTask:
        func = task.func
        options = task_options(func)
        timeout = options.timeout if options.timeout is not None else default_timeout
        own_call = None if type(task).__call__ in _PLAIN_CALLS else task.__call__
        return cls(
            func,
            tuple(task.args),
            dict(task.kwargs),
            options.name or qualified_name(func),
            timeout=timeout,
            is_async=task.is_async,
            own_call=own_call,
            fastapi_span=fastapi_span,
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
