"""Hand a registered task that cannot finish here to the durable queue, instead of losing it.

Every platform caps the work done after a response: the invocation deadline on Lambda, the
grace period after SIGTERM in a container. Before an in-process task starts (``run_tasks``:
the inline and lambda-extension backends), ``Handoff.wants`` compares its expected run time,
its declared ``@task(timeout=)`` (else ``TASK_TIMEOUT_SECONDS``), with the time left here:

- on Lambda, until the invocation deadline minus ``LAMBDA_DEADLINE_MARGIN_MS``;
- in a container, once SIGTERM arrived (``begin_shutdown``), until the grace period ends
  (a task with no declared timeout never fits: nothing says it would finish).

A task that does not fit goes to ``TASK_QUEUE_URL`` with its own ``task_id`` and the request's
``request_id`` (the worker's idempotency runs it once), and ``task.handed_off`` says why, with the
numbers. When the grace period ends (the request's run is cancelled), every registered task still
open is handed off, the running one included: a registered task is at-least-once everywhere (the
worker's idempotency by ``task_id`` keeps a completed run from running again), unless it is declared
``@task(..., at_most_once=True)``. If the queue does not take a task, it runs here as far as it can;
one that the queue refused when nothing can run it here any more ends ``task.lost``.
Unregistered tasks cannot be named outside this process: their ``task.timed_out`` and
``task.cancelled`` lines say ``handoff: "not possible: unregistered"``.

While nothing is near a deadline or a shutdown, the check is a few attribute reads per task.
The SQS client is created by the first handoff, so a function's cold start does not pay for it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import anyio.to_thread

from shared.background import lifecycle
from shared.background.errors import TaskRejected
from shared.background.lifecycle import task_fields
from shared.background.protocols import Sender
from shared.background.registry import lookup as registered_function
from shared.background.registry import registered_names, task_options
from shared.background.task import QueuedTask
from shared.logs import get_logger
from shared.settings import Settings, running_on_lambda

log = get_logger("shared.background.handoff")

DEADLINE = "deadline"
SHUTDOWN = "shutdown"
SEND_RESERVE_S = 0.1
"""On Lambda, time kept after the last possible send to log a task the queue did not take."""
SHUTDOWN_MARGIN_S = 0.5
"""After SIGTERM, a task starts only if it would end this long before the grace period does:
room for a late wake-up of the event loop, and for the sends at the end of the grace."""
DRAIN_TIMEOUT_S = 10.0
"""How long a stopping server waits for handoffs still being sent."""
UNREGISTERED = "not possible: unregistered"
NO_QUEUE = "not possible: no queue (TASK_QUEUE_URL is not set)"

_shutdown_deadline: float | None = None
_grace_s: float | None = None


def begin_shutdown(grace_s: float) -> None:
    """SIGTERM arrived: from now on a task starts only if it fits in what is left of ``grace_s``.

    Called from a signal handler (``shared.serve``), so it only records the time.
    """
    global _shutdown_deadline, _grace_s
    if _shutdown_deadline is None:
        _shutdown_deadline, _grace_s = time.monotonic() + grace_s, grace_s
        _current.warm_up_in_background()


def reset() -> None:
    """Back to no handoff and no shutdown: for tests, which configure several in one process."""
    global _current, _shutdown_deadline, _grace_s
    _current = Handoff(None, NO_QUEUE)
    _shutdown_deadline = _grace_s = None


class Decision:
    """Why a task goes to the queue instead of starting here, and the numbers that decided it."""

    __slots__ = ("numbers", "reason", "send_by")

    def __init__(self, reason: str, numbers: dict[str, Any], send_by: float | None = None) -> None:
        self.reason = reason
        self.numbers = numbers
        self.send_by = send_by
        """Monotonic time by which the send must be done (Lambda: the real deadline, less a reserve)."""

    def __repr__(self) -> str:
        return f"Decision(reason={self.reason!r}, numbers={self.numbers!r}, send_by={self.send_by!r})"


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class Handoff:
    """The process's handoff policy and sender; ``enabled`` only with a queue and ``TASK_HANDOFF=auto``."""

    def __init__(
        self,
        settings: Settings | None,
        off_reason: str | None = None,
        sender: Callable[[], Sender] | None = None,
    ) -> None:
        self.settings = settings
        self.enabled = off_reason is None and sender is not None
        self.off_reason = off_reason or ("" if sender is not None else NO_QUEUE)
        self.margin_s = settings.lambda_deadline_margin_ms / 1000 if settings is not None else 0.0
        self._make_sender = sender
        self._sender: Sender | None = None
        self._sending: set[asyncio.Task[Any]] = set()
        self._moving: set[str] = set()
        self._warming: threading.Thread | None = None
        self._warm_at_deadline = running_on_lambda()

    @classmethod
    def from_settings(cls, settings: Settings, sender: Callable[[], Sender]) -> Handoff:
        """``sender`` makes the queue's sender at the first handoff (or warm-up), not at cold start."""
        if settings.task_handoff == "off":
            return cls(settings, "off (TASK_HANDOFF=off)")
        if not settings.task_queue_url:
            return cls(settings, NO_QUEUE)
        return cls(settings, sender=sender)

    def warm_up_in_background(self) -> None:
        """Create the SQS client in a thread, once: it takes a few hundred ms, too long for a first handoff.

        Started when a server has started (``shared.serve``) or at the latest at SIGTERM: there it
        also opens the client's connection with a request that sends nothing, so that the first
        handoff of the process is as fast as the next ones. On Lambda it is started by the first task
        run against a deadline (after the response, so that the cold start does not pay for it), and
        creates the client only: a handoff decided then would wait for that extra request.
        """
        if self.enabled and self._warming is None:
            self._warming = threading.Thread(target=self.warm_up, name="handoff-warm-up", daemon=True)
            self._warming.start()

    def warm_up(self) -> None:
        """The sender's client, and, in a long-lived process, its connection (see ``warm_up_in_background``)."""
        try:
            self.sender.warm_up(connect=not self._warm_at_deadline)
        except Exception as exc:  # the handoff itself will report it, task by task
            log.warning("handoff.warm_up_failed", error_type=type(exc).__qualname__, error=str(exc))

    @property
    def sender(self) -> Sender:
        if self._sender is None:
            assert self._make_sender is not None, "a disabled handoff has no sender"
            self._sender = self._make_sender()
        return self._sender

    # --- before a task starts ----------------------------------------------------------

    def wants(self, task: QueuedTask, deadline: float | None) -> Decision | None:
        """A Decision when ``task`` should go to the queue instead of starting here; else None."""
        if deadline is None and _shutdown_deadline is None:
            return None
        if task_options(task.func).name is None:
            return None
        now = time.monotonic()
        expected = task.timeout
        if deadline is not None:
            left = deadline - now
            if self._warm_at_deadline and self._warming is None:
                self.warm_up_in_background()
                self._warn_never_fit(left)
            if left <= 0 or (expected is not None and expected > left):
                numbers = {"expected_s": expected, "time_left_s": _seconds(left), "deadline_margin_s": self.margin_s}
                return Decision(DEADLINE, numbers, deadline + self.margin_s - SEND_RESERVE_S)
        if _shutdown_deadline is not None:
            left = _shutdown_deadline - now
            if expected is None or expected > left - SHUTDOWN_MARGIN_S:
                numbers = {
                    "expected_s": expected,
                    "grace_left_s": _seconds(left),
                    "grace_s": _grace_s,
                    "shutdown_margin_s": SHUTDOWN_MARGIN_S,
                }
                return Decision(SHUTDOWN, numbers)
        return None

    async def move(self, task: QueuedTask, backend: str, decision: Decision) -> bool:
        """Send ``task`` to the queue; False if the queue did not take it (``task.handoff_failed``).

        The send outlives a cancellation of the caller (the grace period ending meanwhile): the
        task then ends with the send, ``task.handed_off``, or ``task.lost`` if it was refused.
        """
        self._moving.add(task.task_id)
        job = self._spawn(self._send([task], backend, decision))
        try:
            refused = await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(lambda done: self._lose_refused(done, [task], backend, decision))
            raise
        self._moving.discard(task.task_id)
        return not refused

    def _lose_refused(
        self, job: asyncio.Task[list[QueuedTask]], tasks: Sequence[QueuedTask], backend: str, decision: Decision
    ) -> None:
        """A send nobody waits for any more is over: what it did not move is lost (nothing runs it here)."""
        refused = tasks if job.cancelled() or job.exception() is not None else job.result()
        for task in tasks:
            self._moving.discard(task.task_id)
        for task in refused:
            if lifecycle.is_open(task.task_id):
                self.lose(task, backend, decision, "the queue did not take it and nothing runs it here any more")

    def lose(self, task: QueuedTask, backend: str, decision: Decision, error: str) -> None:
        """``task.lost``: the queue did not take ``task`` and it cannot run here either."""
        fields = task_fields(task, backend)
        lifecycle.end("task.lost", fields, level="error", reason=decision.reason, error=error, **decision.numbers)

    # --- when work is cut ----------------------------------------------------------------

    def movable(self, task: QueuedTask, *, started: bool) -> bool:
        if not self.enabled:
            return False
        options = task_options(task.func)
        return options.name is not None and (not started or not options.at_most_once)

    def note(self, task: QueuedTask, *, started: bool, reason: str = SHUTDOWN) -> str:
        """What becomes of a task cut here: the ``handoff`` key of ``task.timed_out``/``task.cancelled``."""
        if not self.enabled:
            return self.off_reason
        options = task_options(task.func)
        if options.name is None:
            return UNREGISTERED
        if started and reason == DEADLINE:
            return "not possible: already running (with a declared timeout it is handed off before it starts)"
        if started and options.at_most_once:
            return "not possible: already running and at_most_once"
        return "handing off"

    def cut(self, tasks: Sequence[QueuedTask], backend: str) -> None:
        """A request's run was cancelled (the grace period ended): every task of it still open, and
        not being moved already, is handed off if it may be, else logged ``task.cancelled``.

        Synchronous, from the cancelled run: the send is a task of its own, which ``drain`` awaits.
        A task still open here either never started or started and may run again (not at_most_once).
        """
        movable: list[QueuedTask] = []
        for task in tasks:
            if not lifecycle.is_open(task.task_id) or task.task_id in self._moving:
                continue
            if self.movable(task, started=False):
                movable.append(task)
            else:
                note = self.note(task, started=False)
                lifecycle.end("task.cancelled", task_fields(task, backend), level="error", started=False, handoff=note)
        if movable:
            numbers = {"grace_s": _grace_s, "grace_left_s": 0.0}
            decision = Decision(SHUTDOWN, numbers)
            for task in movable:
                self._moving.add(task.task_id)
            job = self._spawn(self._send(movable, backend, decision))
            job.add_done_callback(lambda done: self._lose_refused(done, movable, backend, decision))

    async def drain(self) -> None:
        """Wait (up to ``DRAIN_TIMEOUT_S``) for handoffs still being sent: a stopping server calls this."""
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=DRAIN_TIMEOUT_S)

    # --- sending -------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, list[QueuedTask]]) -> asyncio.Task[list[QueuedTask]]:
        job = asyncio.ensure_future(coroutine)  # in a copy of this context: request_id, Lambda keys
        self._sending.add(job)
        job.add_done_callback(self._sending.discard)
        return job

    async def _send(self, tasks: Sequence[QueuedTask], backend: str, decision: Decision) -> list[QueuedTask]:
        """Send ``tasks``; each taken one ends ``task.handed_off``, each refused one is logged
        ``task.handoff_failed`` and returned, still open: the caller runs it here or loses it."""
        decided = time.perf_counter()
        refused: list[tuple[QueuedTask, str]] = []
        sendable: list[QueuedTask] = []
        message_ids: dict[str, str] = {}
        error = "the queue did not take it (see task.enqueue_failed)"
        cancelled = False
        try:
            for task in tasks:
                try:
                    self.sender.accept(task)
                except TaskRejected as exc:
                    refused.append((task, f"not possible: {exc}"))
                else:
                    sendable.append(task)
            if sendable:
                limit = None if decision.send_by is None else max(0.0, decision.send_by - time.monotonic())
                async with asyncio.timeout(limit):
                    warming = self._warming
                    if warming is not None and warming.is_alive():
                        # Wait for the client being created rather than create a second one.
                        await anyio.to_thread.run_sync(warming.join, abandon_on_cancel=True)
                    await self.sender.send_now(sendable, message_ids)
        except TimeoutError:
            error = "the queue did not take it before the invocation deadline"
        except asyncio.CancelledError:
            cancelled, error = True, "sending was cancelled (the process is exiting)"
        except Exception as exc:  # e.g. the SQS client could not be created
            error = f"{type(exc).__qualname__}: {exc}"
        handoff_ms = round((time.perf_counter() - decided) * 1000, 3)
        for task in sendable:
            message_id = message_ids.get(task.task_id)
            if message_id is None:
                refused.append((task, error))
                continue
            lifecycle.end(
                "task.handed_off",
                task_fields(task, backend),
                reason=decision.reason,
                message_id=message_id,
                handoff_ms=handoff_ms,
                **decision.numbers,
            )
        for task, why in refused:
            log.error(
                "task.handoff_failed",
                **task_fields(task, backend),
                reason=decision.reason,
                error=why,
                **decision.numbers,
            )
        if cancelled:
            raise asyncio.CancelledError
        return [task for task, _ in refused]

    def _warn_never_fit(self, left: float) -> None:
        """On the first Lambda invocation: registered tasks whose timeout exceeds what an invocation leaves."""
        default = self.settings.task_timeout_seconds if self.settings is not None else None
        timeouts = {name: task_options(registered_function(name)).timeout for name in registered_names()}
        never = sorted(name for name, timeout in timeouts.items() if (timeout or default or 0) > left)
        if never:
            log.warning(
                "handoff.always",
                tasks=never,
                time_left_s=_seconds(left),
                consequence="their declared timeout exceeds what an invocation of this function leaves: run "
                "in-process, they always go to the queue; lower @task(timeout=) or raise the function's timeout",
            )

    # --- start-up ----------------------------------------------------------------------------

    def log_ready(self) -> None:
        """The start-up (Lambda: INIT) line: which tasks of this process can be handed off."""
        if not self.enabled:
            log.info("handoff.configured", enabled=False, reason=self.off_reason)
            return
        options = {name: task_options(registered_function(name)) for name in registered_names()}
        log.info(
            "handoff.configured",
            enabled=True,
            tasks=sorted(options),
            at_most_once=sorted(name for name, option in options.items() if option.at_most_once),
            without_timeout=sorted(
                name
                for name, option in options.items()
                if option.timeout is None and (self.settings is None or self.settings.task_timeout_seconds is None)
            ),
            not_possible="unregistered tasks (plain functions): they cannot be named outside this process",
        )


_current = Handoff(None, NO_QUEUE)


def current() -> Handoff:
    return _current


def configure(settings: Settings, sender: Callable[[], Sender]) -> Handoff:
    """Set the process's handoff from settings (``build_executor`` calls it)."""
    global _current
    _current = Handoff.from_settings(settings, sender)
    return _current
