"""Stable names and options for task functions.

``@task("email.send_welcome", timeout=30)`` names a function so that it can
be referred to outside this process (an SQS message, a log query), and sets options
the executor reads. Endpoints still pass the function itself to ``add_task``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_ATTRIBUTE = "__task_options__"


class TaskOptions:
    """What ``@task`` declared about a function (a plain class: defined at every cold start)."""

    __slots__ = ("at_most_once", "name", "timeout", "tracked")

    def __init__(
        self, name: str | None = None, timeout: float | None = None, at_most_once: bool = False, tracked: bool = False
    ) -> None:
        self.name = name
        self.timeout = timeout
        self.at_most_once = at_most_once
        self.tracked = tracked

    def __repr__(self) -> str:
        return (
            f"TaskOptions(name={self.name!r}, timeout={self.timeout!r}, "
            f"at_most_once={self.at_most_once}, tracked={self.tracked})"
        )


_registry: dict[str, Callable[..., Any]] = {}


def task(
    name: str, *, timeout: float | None = None, at_most_once: bool = False, tracked: bool = False
) -> Callable[[F], F]:
    """Register ``func`` under ``name``; the function itself is returned unchanged.

    ``timeout`` is also its expected run time: a task that would not fit in the time this
    environment has left is handed to the durable queue instead of started
    (``shared.background.handoff``). A registered task is at-least-once: cut while it runs
    (the end of a shutdown grace), it is handed off and may run again from the start, as the
    worker may run a message twice. ``at_most_once``: never hand it off once started; cut, it
    ends ``task.cancelled`` instead. ``tracked``: each run's status is recorded for the client
    to follow (``GET /<function>/tasks/{task_id}``, docs/task-status.md); what it returns, if
    small and JSON-serialisable, is shown in that record.
    """

    def register(func: F) -> F:
        existing = _registry.get(name)
        if existing is not None and existing is not func:
            raise ValueError(f"task name {name!r} is already registered to {existing!r}")
        _registry[name] = func
        setattr(func, _ATTRIBUTE, TaskOptions(name=name, timeout=timeout, at_most_once=at_most_once, tracked=tracked))
        return func

    return register


def task_options(func: Callable[..., Any]) -> TaskOptions:
    options = getattr(func, _ATTRIBUTE, None)
    return options if isinstance(options, TaskOptions) else TaskOptions()


def registered_name(func: Callable[..., Any]) -> str | None:
    return task_options(func).name


def lookup(name: str) -> Callable[..., Any]:
    """The function registered under ``name``; KeyError when there is none."""
    return _registry[name]


def registered_names() -> list[str]:
    return sorted(_registry)
