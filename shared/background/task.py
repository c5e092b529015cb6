"""What the task layer knows about one queued task."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette._utils import is_async_callable
from starlette.background import BackgroundTask

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

    def __post_init__(self) -> None:
        if self.is_async is None:
            self.is_async = is_async_callable(self.func)

    @classmethod
    def from_starlette(cls, task: BackgroundTask, default_timeout: float | None = None) -> QueuedTask:
        func = task.func
        options = task_options(func)
        timeout = options.timeout if options.timeout is not None else default_timeout
        return cls(
            func,
            tuple(task.args),
            dict(task.kwargs),
            options.name or qualified_name(func),
            timeout=timeout,
            is_async=task.is_async,
        )


def flatten(background: BackgroundTask) -> list[BackgroundTask]:
    """A response's ``background`` is one task or a ``BackgroundTasks`` holding many."""
    nested = getattr(background, "tasks", None)
    if nested is None:
        return [background]
    if all(type(task) is BackgroundTask for task in nested):  # what add_task makes: nothing nested
        return list(nested)
    return [leaf for task in nested for leaf in flatten(task)]
