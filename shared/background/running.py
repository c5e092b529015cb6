"""``task.running``: a task still running ``TASK_RUNNING_NOTICE_SECONDS`` after its start says so, once.

At ``LOG_LEVEL=INFO`` a task writes ``task.queued`` and its terminal line (``task.started`` is
DEBUG), so without this line a long task would be invisible until it ends. ``task.overrunning``
covers only a sync task past its own timeout; this covers every task that has started and not
ended, on every backend and thread.

One daemon thread, started with the first task, holds a heap of due times; ``watch`` adds one
(the runner, at the start) and wakes the thread when it is due before the thread would wake;
``forget`` removes it (``lifecycle.end``, at the end). It logs in the task's own context (its
request id and trace id on the line), holding the lock ``forget`` takes: the notice is never
written after the task's end. The thread reads no settings and survives a line it cannot
write: a notice is not worth losing every later one.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import math
import os
import threading
import time
from typing import Any

from shared.background.events import RUNNING
from shared.logs import get_logger
from shared.settings import get_settings

log = get_logger("shared.background")


class _Notices:
    def __init__(self) -> None:
        self._lock = threading.Condition(threading.Lock())
        self._due: list[tuple[float, int, str]] = []
        self._watched: dict[str, tuple[int, dict[str, Any], contextvars.Context, float, float]] = {}
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._wakes_at = math.inf

    def watch(self, fields: dict[str, Any]) -> None:
        """The task ``fields`` names has started: note it if it is still running after the interval."""
        after = get_settings().task_running_notice_seconds
        if not after:
            return
        now = time.monotonic()
        due, task_id = now + after, fields["task_id"]
        with self._lock:
            order = next(self._order)
            self._watched[task_id] = (order, fields, contextvars.copy_context(), now, after)
            heapq.heappush(self._due, (due, order, task_id))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="task-running-notices", daemon=True)
                self._thread.start()
            elif due < self._wakes_at:  # due before the thread wakes (idle, or a shorter interval now)
                self._lock.notify()

    def forget(self, task_id: str) -> None:
        """The task ended: no notice for it (a no-op for a task never watched)."""
        if task_id in self._watched:
            with self._lock:
                self._watched.pop(task_id, None)

    def after_fork(self) -> None:
        """In a forked child the thread is gone (and the lock may be held): start afresh."""
        self._lock = threading.Condition(threading.Lock())
        self._thread = None
        self._watched.clear()
        self._due.clear()

    def reset(self) -> None:
        """Forget every watched task: for tests, which run many apps in one process."""
        with self._lock:
            self._watched.clear()
            self._due.clear()

    def _run(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                while self._due and self._due[0][0] <= now:
                    _, order, task_id = heapq.heappop(self._due)
                    watched = self._watched.get(task_id)
                    if watched is not None and watched[0] == order:  # not ended, not a later run of it
                        self._notify(*watched[1:])
                        del self._watched[task_id]  # after the line: an end meanwhile waits for the lock
                self._wakes_at = self._due[0][0] if self._due else math.inf
                self._lock.wait(self._wakes_at - now if self._due else None)

    @staticmethod
    def _notify(fields: dict[str, Any], context: contextvars.Context, started: float, after: float) -> None:
        running_s = round(time.monotonic() - started, 3)
        # The log stream closed (the process is ending), or the line could not be rendered: this
        # notice is lost, never the thread that writes the next ones.
        with contextlib.suppress(Exception):
            context.run(log.info, RUNNING, **fields, running_s=running_s, notice_after_s=after)


_notices = _Notices()
os.register_at_fork(after_in_child=_notices.after_fork)
watch = _notices.watch
forget = _notices.forget
reset = _notices.reset
