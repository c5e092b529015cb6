"""Run tasks one by one, each isolated, each logged from start to end.

A task that raises, times out or is cancelled is logged with its exception and the
next task still runs: plain Starlette would skip every task after the first failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import anyio.to_thread

from shared.background import handoff as handoffs
from shared.background import lifecycle, running
from shared.background.errors import PermanentTaskError, TaskStuck
from shared.background.events import STARTED
from shared.background.handoff import DEADLINE, Handoff
from shared.background.lifecycle import task_fields
from shared.background.protocols import DeadlineWatch
from shared.background.task import QueuedTask
from shared.logs import get_logger, iso_now

log = get_logger("shared.background")

Outcome = Literal["succeeded", "failed", "failed_permanently", "overrunning"]


def _failed(fields: dict[str, Any], exc: BaseException, **extra: Any) -> Outcome:
    if isinstance(exc, PermanentTaskError):
        lifecycle.end("task.failed", fields, level="error", **extra, permanent=True, exc_info=exc)
        return "failed_permanently"
    lifecycle.end("task.failed", fields, level="error", **extra, exc_info=exc)
    return "failed"


def _succeeded(fields: dict[str, Any], **extra: Any) -> Outcome:
    lifecycle.end("task.succeeded", fields, **extra)
    return "succeeded"


def _stuck(fields: dict[str, Any], duration_ms: float, timeout_s: float | None, **note: Any) -> None:
    """``task.timed_out`` of a sync task whose thread still runs at the deadline (the process must end)."""
    lifecycle.end(
        "task.timed_out",
        fields,
        level="error",
        started=True,
        still_running=True,
        duration_ms=duration_ms,
        timeout_s=timeout_s,
        **note,
    )


_fastapi_operation: Callable[..., AbstractContextManager[None]] | None = None


def _span(task: QueuedTask) -> AbstractContextManager[None]:
    """FastAPI's ``fastapi.background_task`` span (``FastAPI(telemetry=...)``), as its ``BackgroundTasks`` opens it.

    FastAPI's helper is looked up once: a ``from`` import of it costs about 50 us per call, and the
    worker, which runs tasks without FastAPI, never gets here (``fastapi_span`` is false there).
    """
    global _fastapi_operation
    if not task.fastapi_span:
        return nullcontext()
    if _fastapi_operation is None:
        from fastapi.background import _operation  # type: ignore[attr-defined]  # loaded with fastapi already

        _fastapi_operation = _operation
    return _fastapi_operation(name="background_task", function=task.func)


_still_running: set[_SyncCall] = set()


def threads_still_running() -> int:
    """Sync tasks nobody waits for any more whose thread still runs (a stopping server ends the process)."""
    return len(_still_running)


class _SyncCall:
    """A sync task's call in anyio's worker thread whose end stays known once nobody awaits it.

    ``give_up()`` (its wait timed out or was cancelled) says whether it started; one that had
    not never will. ``watch()`` gives a future that is done when the thread ends.
    """

    __slots__ = ("_claim", "_watcher", "ended", "error", "task")

    def __init__(self, task: QueuedTask) -> None:
        self.task = task
        self._claim = [True]  # taken (list.pop is atomic) by the thread starting it, or by give_up()
        self.ended = False
        self.error: BaseException | None = None
        self._watcher: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def __call__(self) -> None:
        try:
            self._claim.pop()
        except IndexError:  # given up before it started: it never runs
            return
        try:
            self.task.func(*self.task.args, **self.task.kwargs)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.ended = True
            watcher = self._watcher
            if watcher is not None:
                _still_running.discard(self)
                with contextlib.suppress(RuntimeError):  # the loop is gone: the process is ending
                    watcher[0].call_soon_threadsafe(_settle, watcher[1])

    def give_up(self) -> bool:
        """Stop waiting; True if the task runs or ran (False: it never will)."""
        try:
            self._claim.pop()
        except IndexError:
            return True
        return False

    def watch(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._watcher = (loop, future)
        _still_running.add(self)
        if self.ended:
            _still_running.discard(self)
            _settle(future)
        return future


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Overrun:
    """A sync task whose wait was cut (its timeout, or the deadline) while its thread runs on."""

    def __init__(
        self,
        task: QueuedTask,
        fields: dict[str, Any],
        call: _SyncCall,
        started: float,
        timeout_s: float | None,
        note: dict[str, Any],
    ) -> None:
        self.task, self.fields, self.call = task, fields, call
        self.started, self.timeout_s, self.note = started, timeout_s, note
        self.outcome: Outcome | None = None
        self.ended = call.watch()
        self.ended.add_done_callback(self.report_end)  # in the request's context: its keys on the line

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)

    def report_end(self, _: object = None) -> None:
        """Its thread ended: log its real outcome (in the request's context, as a done callback)."""
        overran = {"overran": True, "timeout_s": self.timeout_s}
        if self.call.error is not None:
            self.outcome = _failed(self.fields, self.call.error, **overran, duration_ms=self.elapsed_ms())
        else:
            self.outcome = _succeeded(self.fields, **overran, duration_ms=self.elapsed_ms())

    def cancelled(self, handoff: Handoff) -> None:
        """The run was cancelled (shutdown grace over) with this thread still running."""
        fields = {**self.fields, "started": True, "still_running": True, "duration_ms": self.elapsed_ms()}
        lifecycle.end("task.cancelled", fields, level="error", handoff=handoff.note(self.task, started=True))


async def _finish(overruns: list[_Overrun], deadline: float | None) -> int:
    """Wait for the overrunning threads of a run (each logs its end); how many succeeded.

    Those still running at ``deadline`` are logged ``task.timed_out`` with ``still_running``
    and TaskStuck is raised: only ending the process stops them (the Lambda backend does).
    """
    pending = {overrun.ended for overrun in overruns if not overrun.ended.done()}
    left = None if deadline is None else deadline - time.monotonic()
    if pending and (left is None or left > 0):
        await asyncio.wait(pending, timeout=left)
    await asyncio.sleep(0)  # the done callbacks of threads that ended just now
    stuck = [overrun for overrun in overruns if not overrun.ended.done()]
    for overrun in stuck:
        overrun.ended.remove_done_callback(overrun.report_end)
        _stuck(overrun.fields, overrun.elapsed_ms(), overrun.timeout_s, **overrun.note)
    if stuck:
        names = ", ".join(f"{overrun.task.name!r} ({overrun.task.task_id})" for overrun in stuck)
        raise TaskStuck(f"sync task {names} still runs at the deadline")
    return sum(overrun.outcome == "succeeded" for overrun in overruns)


def _time_left(task: QueuedTask, deadline: float | None) -> float | None:
    """Seconds this task may run: its own timeout, capped by the deadline (monotonic)."""
    if deadline is None:
        return task.timeout
    left = deadline - time.monotonic()
    return left if task.timeout is None else min(task.timeout, left)


def _start_thread(task: QueuedTask) -> asyncio.Future[Any]:
    """Run a sync task in a daemon thread of its own: nothing waits for it at exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    def target() -> None:
        try:
            result, error = context.run(task.func, *task.args, **task.kwargs), None
        except BaseException as exc:  # handed to the awaiting side
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: the process is ending
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name=f"task-{task.task_id}", daemon=True).start()
    return future


async def _run_sync_to_its_end(task: QueuedTask, fields: dict[str, Any], deadline: float | None) -> Outcome:
    """A sync task on the durable path: its timeout is reported, never pretended.

    A thread cannot be stopped, so past ``task.timeout`` the task is left to finish and
    ``task.overrunning`` says so; its real outcome is logged when it ends, so a task that
    succeeds late is not run again. At ``deadline`` (the message becomes visible again,
    or Lambda ends the invocation) it raises TaskStuck: the caller must end the process.
    """
    started = time.perf_counter()

    def elapsed_ms() -> float:
        return round((time.perf_counter() - started) * 1000, 3)

    future = _start_thread(task)
    hard_left = None if deadline is None else deadline - time.monotonic()
    soft = task.timeout if task.timeout is not None and (hard_left is None or task.timeout < hard_left) else None
    overran: dict[str, Any] = {}
    try:
        done, _ = await asyncio.wait({future}, timeout=soft if soft is not None else hard_left)
        if not done and soft is not None:
            overran = {"overran": True, "timeout_s": soft}
            log.warning(
                "task.overrunning",
                **fields,
                timeout_s=soft,
                duration_ms=elapsed_ms(),
                consequence="a sync task cannot be stopped: it runs on, its message stays invisible until it ends",
            )
            left = None if deadline is None else deadline - time.monotonic()
            done, _ = await asyncio.wait({future}, timeout=left)
    except asyncio.CancelledError:
        lifecycle.end("task.cancelled", fields, level="error", started=True, duration_ms=elapsed_ms())
        raise
    duration_ms = elapsed_ms()
    if not done:
        _stuck(fields, duration_ms, hard_left)
        raise TaskStuck(f"task {task.name!r} ({task.task_id}) still runs at its deadline")
    error = future.exception()
    if error is not None:
        return _failed(fields, error, **overran, duration_ms=duration_ms)
    return _succeeded(fields, **overran, duration_ms=duration_ms)


def _run_sync_here(
    task: QueuedTask,
    fields: dict[str, Any],
    deadline: float | None,
    timeout_s: float | None,
    watch: DeadlineWatch,
    handoff: Handoff | None,
) -> Outcome:
    """A sync task called on this thread; ``watch`` ends the process if it still runs at ``deadline``
    (``timeout_s`` from now, for its ``task.timed_out`` line)."""
    started = time.perf_counter()

    def elapsed_ms() -> float:
        return round((time.perf_counter() - started) * 1000, 3)

    def expired() -> str:
        note = {"handoff": handoff.note(task, started=True, reason=DEADLINE)} if handoff is not None else {}
        _stuck(fields, elapsed_ms(), timeout_s, **note)
        return f"sync task {task.name!r} ({task.task_id}) still runs at the deadline"

    try:
        with watch.watch(deadline, expired), _span(task):
            _call_as_the_thread_pool_would(task)
    except Exception as exc:
        return _failed(fields, exc, duration_ms=elapsed_ms())
    return _succeeded(fields, duration_ms=elapsed_ms())


def _call_as_the_thread_pool_would(task: QueuedTask) -> None:
    """``task.func`` called here, seeing what a thread pool worker sees: a copy of this context (what
    it binds stays its own) and no running event loop (it may start one, with ``asyncio.run``)."""
    loop = asyncio._get_running_loop()
    asyncio._set_running_loop(None)
    try:
        contextvars.copy_context().run(task.func, *task.args, **task.kwargs)
    finally:
        asyncio._set_running_loop(loop)


async def run_task(
    task: QueuedTask,
    backend: str,
    deadline: float | None = None,
    *,
    finish_sync: bool = False,
    handoff: Handoff | None = None,
    overruns: list[_Overrun] | None = None,
    on_this_thread: DeadlineWatch | None = None,
) -> Outcome:
    """Run one task and say how it ended; never raises, except to pass on cancellation (and
    TaskStuck: a sync task still running at ``deadline``).

    ``finish_sync`` (the worker): a sync task is waited for past its timeout, up to
    ``deadline``, where TaskStuck is raised (see ``_run_sync_to_its_end``).
    ``handoff`` (in-process runs): timed-out and cancelled lines say what becomes of the work;
    when cancelled, a task the handoff may move is left open for it (``run_tasks`` hands it off).
    ``overruns`` (in-process runs): a sync task past its timeout is logged ``task.overrunning``
    and added there, for ``run_tasks`` to wait for while the next tasks run; without it, it is
    waited for here. Either way its real outcome is logged when its thread ends.
    ``on_this_thread`` (a sync task without a timeout that nothing waits behind): it runs on
    this thread, without the two thread hand-overs, and ``on_this_thread`` ends the process if
    it still runs at ``deadline``, after the same ``task.timed_out`` line a thread would get.
    """
    fields = task_fields(task, backend)
    time_left = _time_left(task, deadline)
    if time_left is not None and time_left <= 0:
        note = {"handoff": handoff.note(task, started=False)} if handoff is not None else {}
        lifecycle.end(
            "task.timed_out",
            fields,
            level="error",
            started=False,
            error="deadline reached before the task started",
            **note,
        )
        return "failed"

    # At INFO the terminal line says when it started and how long it waited (task.started is DEBUG).
    fields["started_at"] = iso_now()
    fields["wait_ms"] = round((time.monotonic() - task.queued_at) * 1000, 3)
    log.debug(STARTED, **fields)
    running.watch(fields)
    lifecycle.started(fields)
    own_call = task.own_call
    if own_call is None:
        if finish_sync and not task.is_async:
            return await _run_sync_to_its_end(task, fields, deadline)
        if on_this_thread is not None and not task.is_async and task.timeout is None:
            return _run_sync_here(task, fields, deadline, time_left, on_this_thread, handoff)
    started = time.perf_counter()

    def elapsed_ms() -> float:
        return round((time.perf_counter() - started) * 1000, 3)

    call = None if task.is_async or own_call is not None else _SyncCall(task)

    async def execute() -> None:
        with _span(task):
            if own_call is not None:  # a BackgroundTask subclass: its own __call__, as Starlette would call it
                await own_call()
            elif call is None:
                await task.func(*task.args, **task.kwargs)
            else:  # abandon_on_cancel: a thread cannot be stopped; past the limit it is watched instead.
                await anyio.to_thread.run_sync(call, abandon_on_cancel=True)

    try:
        if time_left is None:  # most tasks: no timeout context at all (asyncio.timeout(None) costs as much)
            await execute()
        else:
            async with asyncio.timeout(time_left):
                await execute()
    except TimeoutError:
        by_deadline = handoff is not None and time_left != task.timeout
        note = {"handoff": handoff.note(task, started=True, reason=DEADLINE)} if by_deadline and handoff else {}
        if call is not None and call.give_up():
            overrun = _Overrun(task, fields, call, started, time_left, note)
            if time_left == task.timeout:
                log.warning(
                    "task.overrunning",
                    **fields,
                    timeout_s=time_left,
                    duration_ms=elapsed_ms(),
                    consequence="a sync task cannot be stopped: it runs on beside the next tasks, "
                    "its real outcome is logged when it ends",
                )
            if overruns is not None:
                overruns.append(overrun)
                return "overrunning"
            try:
                return "succeeded" if await _finish([overrun], deadline) else "failed"
            except asyncio.CancelledError:
                _cancel([overrun], handoff or handoffs.current())
                raise
        never = {"error": "it had not started (no worker thread was free)"} if call is not None else {}
        lifecycle.end(
            "task.timed_out",
            fields,
            level="error",
            started=True,
            duration_ms=elapsed_ms(),
            timeout_s=time_left,
            **never,
            **note,
        )
        return "failed"
    except asyncio.CancelledError:
        still = call is not None and call.give_up() and not call.ended
        if still and call is not None:
            call.watch()  # a stopping server ends the process rather than wait for this thread
        if handoff is not None and handoff.movable(task, started=True):
            raise  # still open: run_tasks hands it off (at-least-once: the worker may run it again)
        note = {"handoff": handoff.note(task, started=True)} if handoff is not None else {}
        lifecycle.end(
            "task.cancelled",
            fields,
            level="error",
            started=True,
            duration_ms=elapsed_ms(),
            **({"still_running": True} if still else {}),
            **note,
        )
        raise
    except Exception as exc:
        return _failed(fields, exc, duration_ms=elapsed_ms())
    return _succeeded(fields, duration_ms=elapsed_ms())


async def run_tasks(
    tasks: Sequence[QueuedTask], backend: str, deadline: float | None = None, watch: DeadlineWatch | None = None
) -> int:
    """Run ``tasks`` in order; returns how many succeeded.

    A registered task that would not finish in the time left (deadline, shutdown grace) is
    handed to the durable queue instead (``shared.background.handoff``). If the whole run is
    cancelled (shutdown grace exceeded), the running task and those that never got to start
    are handed off (registered ones) or logged as cancelled, so none disappears without a trace.

    A sync task past its timeout runs on (``task.overrunning``) while the next tasks run; the
    run ends when its thread does, its real outcome logged. One still running at ``deadline``
    (Lambda) raises TaskStuck once the other tasks are done or handed off: the caller must
    end the process, or its thread would run on into later invocations.

    With ``watch`` (the Lambda runner, a thread of its own), the last task, if it is a sync task
    without a timeout and no earlier one overruns, is called on this thread: nothing waits
    behind it, so the thread pool's two hand-overs would only delay the environment's release.
    """
    handoff = handoffs.current()
    for task in tasks:
        if not lifecycle.is_open(task.task_id):  # run without an executor's accept (tests, tools)
            lifecycle.open(task_fields(task, backend))
    overruns: list[_Overrun] = []
    succeeded = 0
    for index, task in enumerate(tasks):
        try:
            decision = handoff.wants(task, deadline) if handoff.enabled else None
            if decision is None:
                last = watch if index == len(tasks) - 1 and not overruns else None
                outcome = await run_task(
                    task, backend, deadline, handoff=handoff, overruns=overruns, on_this_thread=last
                )
                succeeded += outcome == "succeeded"
            elif not await handoff.move(task, backend, decision):
                # The queue did not take it: run it here as far as it can, if any time is left.
                left = _time_left(task, deadline)
                if left is not None and left <= 0:
                    handoff.lose(task, backend, decision, "the queue did not take it; no time is left to run it here")
                else:
                    succeeded += await run_task(task, backend, deadline, overruns=overruns) == "succeeded"
        except asyncio.CancelledError:
            # Cut by the end of the grace: what is still open (running, moving, not started) is handed off or logged.
            _cancel(overruns, handoff)
            handoff.cut(tasks, backend)
            raise
    if overruns:
        try:
            succeeded += await _finish(overruns, deadline)
        except asyncio.CancelledError:
            _cancel(overruns, handoff)
            handoff.cut(tasks, backend)
            raise
    return succeeded


def _cancel(overruns: list[_Overrun], handoff: Handoff) -> None:
    """The run was cancelled: overrunning threads that may not be handed off end ``task.cancelled``."""
    for overrun in overruns:
        if not overrun.ended.done():
            overrun.ended.remove_done_callback(overrun.report_end)
            if not handoff.movable(overrun.task, started=True):
                overrun.cancelled(handoff)
