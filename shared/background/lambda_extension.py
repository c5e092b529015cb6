"""Run an invocation's tasks after its response, before Lambda freezes the environment.

Lambda freezes an execution environment once the runtime has posted the response
*and* every registered extension has asked for its next event. This backend is an
*internal extension*: a thread of the function's own process that registers with
the Extensions API during init (when the handler module is imported) and, on each
INVOKE, asks for the next event only when the handler has returned and every job
deferred during the invocation has run::

    main thread (awslambdaric)     runner thread                extension thread
    GET runtime/invocation/next                                 (asleep; INVOKE i waits unread)
    handler(event, context)
      app -> dispatch(tasks) --->  run_tasks(tasks)
    handler returns                  ...
    POST .../response (client has it) ...
                                   done: GET extension/event/next -> environment may freeze
                                                                reads INVOKE i, sleeps again

``event/next`` is sent by whichever thread sees the invocation done: the main thread as
the handler returns if no job is left, else the runner after the last one. It is sent on
one kept-alive connection before anyone has read the INVOKE it ends (HTTP/1.1 pipelining),
so no thread is woken while the handler runs nor between the response and the freeze: a
woken thread would take the GIL from the handler. The extension thread reads each INVOKE
once its invocation is released, and wakes every ``WATCH_INTERVAL_S`` for an INVOKE no
handler took (the runtime failed before calling it) and for jobs stuck past the deadline.

When post-response execution is impossible (no Extensions API, registration
refused, or a handler not built by ``shared.lambda_handler.make_handler``), jobs run
before the handler returns, after a loud ``lambda_extension.unavailable`` warning:
slower, never lost.

Internal extensions register for INVOKE only: Lambda rejects SHUTDOWN for them
(``ShutdownEventNotSupportedForInternalExtension``). Nothing is pending at shutdown
anyway, since the environment is never left idle with jobs outstanding.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from shared import metrics
from shared.background import lifecycle
from shared.background.errors import EXIT_TASK_STUCK, TaskStuck
from shared.background.extensions_api import ExtensionsApiClient, ExtensionsApiError
from shared.background.runner import run_tasks
from shared.background.task import Job, QueuedTask
from shared.logs import get_logger
from shared.settings import get_settings

log = get_logger("shared.background.lambda_extension")

DRAIN_GRACE_S = 1.0
"""Past the invocation deadline, how long to keep waiting for jobs before letting go."""

WATCH_INTERVAL_S = 1.0
"""How often the idle extension thread looks for an INVOKE no handler took, or jobs past the deadline."""

READ_TIMEOUT_S = 1.0
"""Reading an answer that has (begun to) arrive: the rest follows at once."""

HANDLER_START_GRACE_S = 2.0
"""How long after INVOKE the handler may take to start. If the runtime fails before
calling it (an event that is not JSON), the environment is released after this, not at
the deadline; a handler starting even later runs its jobs before returning instead."""


@dataclass(frozen=True)
class _Deferred:
    job: Job
    context: contextvars.Context
    deadline: float | None
    label: str


@dataclass(frozen=True)
class _Watched:
    """A sync task running on the runner thread, and what to log if it still runs at the deadline."""

    deadline: float
    on_expiry: Callable[[], str]
    context: contextvars.Context


@dataclass(frozen=True)
class _Invocation:
    request_id: str
    deadline: float | None
    post_response: bool


def _entry_point() -> Callable[..., Any] | None:
    """The object Lambda calls: ``_HANDLER`` (``module.attribute``), else the runtime client's argument."""
    spec = os.environ.get("_HANDLER") or (sys.argv[1] if len(sys.argv) > 1 else "")
    module_name, _, attribute = spec.rpartition(".")
    module = sys.modules.get(module_name.replace("/", "."))
    entry_point = getattr(module, attribute, None) if module is not None and attribute else None
    return entry_point if callable(entry_point) else None


def _seconds_until(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _monotonic_from_epoch_ms(epoch_ms: Any) -> float | None:
    if not isinstance(epoch_ms, int | float):
        return None
    return time.monotonic() + (epoch_ms / 1000 - time.time())


BEFORE_RESPONSE = "lambda-before-response"
"""The ``backend`` of task lines when post-response execution is impossible (the reason is
logged once, ``lambda_extension.unavailable``): they ran before the handler returned."""


class LambdaExtensionBackend:
    """Tasks run after the response, in the same environment, before it is frozen."""

    extension_name = "fastapi-background-tasks"

    _instance: ClassVar[LambdaExtensionBackend | None] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, runtime_api: str | None) -> None:
        self.runtime_api = runtime_api
        self.extension_id: str | None = None
        self.unavailable_reason: str | None = None
        self._state = threading.Condition()
        self._invocation: _Invocation | None = None  # the handler running now
        self._returned: str | None = None  # the invocation whose handler returned, held for its jobs
        self._returned_deadline: float | None = None
        self._released: deque[str] = deque(maxlen=64)  # event/next sent for these
        self._seen: deque[str] = deque(maxlen=64)  # their INVOKE was read
        self._given_up: deque[str] = deque(maxlen=64)  # released before their handler started
        self._unread = 0  # released invocations whose INVOKE is still unread
        self._broken = False
        self._reading = threading.Lock()  # one reader of the API's answers at a time
        self._tracked: bool | None = None
        self._unreported_logged = False
        self._outstanding = 0
        self._jobs: queue.SimpleQueue[_Deferred] = queue.SimpleQueue()
        self._held: list[_Deferred] = []  # the running handler's jobs: the runner gets them as it returns
        self._api: ExtensionsApiClient | None = None
        self._watched: _Watched | None = None  # a sync task running on the runner thread
        self._wakes_at = float("inf")  # when the extension thread looks again (inf: not known)
        self._wake_early = False

    # --- lifecycle -------------------------------------------------------------

    @classmethod
    def get(cls) -> LambdaExtensionBackend:
        """The process-wide backend; the first call registers the extension (call it during init)."""
        with cls._instance_lock:
            if cls._instance is None:
                backend = cls(os.environ.get("AWS_LAMBDA_RUNTIME_API"))
                backend.start()
                cls._instance = backend
            return cls._instance

    def start(self) -> None:
        """Register with the Extensions API and start the extension and runner threads."""
        if not self.runtime_api:
            self._unavailable("AWS_LAMBDA_RUNTIME_API is not set (not on Lambda)")
            return
        try:
            api = ExtensionsApiClient(self.runtime_api)
            self.extension_id = api.register(self.extension_name, ["INVOKE"])
            api.send_next()  # ready for the first INVOKE, without waiting for a thread to start
        except ExtensionsApiError as exc:
            self._unavailable(f"registration failed: {exc}")
            return
        self._api = api
        threading.Thread(target=self._run_jobs, name="lambda-extension-runner", daemon=True).start()
        threading.Thread(target=self._serve_events, args=(api,), name="lambda-extension", daemon=True).start()
        metrics.extension_flushes(True)
        log.info("lambda_extension.registered", extension_name=self.extension_name, extension_id=self.extension_id)

    def _unavailable(self, reason: str) -> None:
        self.extension_id = None
        self.unavailable_reason = reason
        metrics.extension_flushes(False)
        log.warning(
            "lambda_extension.unavailable",
            reason=reason,
            consequence="tasks run before the handler returns, so responses wait for them",
        )

    @property
    def registered(self) -> bool:
        return self.extension_id is not None

    @property
    def name(self) -> str:
        """``lambda-extension`` when this invocation's tasks run after its response, else ``lambda-before-response``."""
        return "lambda-extension" if self._post_response_possible() else BEFORE_RESPONSE

    # --- what the Lambda handler tells us ------------------------------------------

    def _tracks_invocations(self) -> bool:
        """Does the entry point Lambda calls report its invocations (``make_handler``'s does)?

        A plain ``Mangum(app)`` entry point does not: the extension could not know when its
        handler is done, so its jobs run before it returns. Decorators using
        ``functools.wraps`` (Powertools' ``inject_lambda_context``) are seen through.
        """
        if self._tracked is not None:
            return self._tracked
        with self._state:
            if self._tracked is None:
                entry_point = _entry_point()
                unwrapped = inspect.unwrap(entry_point) if entry_point is not None else None
                self._tracked = bool(getattr(unwrapped, "reports_invocations", False))
                if not self._tracked:
                    found = (
                        "cannot be found"
                        if entry_point is None
                        else f"{entry_point!r:.120} is not built by make_handler"
                    )
                    log.warning(
                        "lambda_extension.unavailable",
                        reason=f"the entry point Lambda calls (_HANDLER) {found}",
                        consequence="tasks run before the handler returns, so responses wait for them",
                    )
            return self._tracked

    @classmethod
    @contextmanager
    def invocation(cls, request_id: str, remaining_ms: int | None) -> Iterator[None]:
        """Wrap one handler call: jobs deferred inside it run after it returned."""
        backend = cls._instance
        if backend is None:
            yield
            return
        margin_s = get_settings().lambda_deadline_margin_ms / 1000
        deadline = None if remaining_ms is None else time.monotonic() + remaining_ms / 1000 - margin_s
        with backend._state:  # no notify: nobody waits for a handler to start but _hold_for_handler's timeout
            backend._invocation = _Invocation(request_id, deadline, post_response=request_id not in backend._given_up)
        try:
            yield
        finally:
            with backend._state:
                backend._invocation = None
                backend._returned, backend._returned_deadline = request_id, deadline
                for deferred in backend._held:
                    backend._jobs.put(deferred)
                backend._held.clear()
                backend._release_if_done()

    # --- Backend protocol --------------------------------------------------------------

    def accept(self, task: QueuedTask) -> None:
        return None

    async def dispatch(self, tasks: Sequence[QueuedTask]) -> None:
        deadline, name = self._current_deadline(), self.name
        watch = self if name != BEFORE_RESPONSE else None  # on the runner thread, which the extension thread watches

        async def run() -> None:
            await run_tasks(tasks, name, deadline=deadline, watch=watch)

        await self._defer(run, label="tasks", deadline=None)

    async def defer(self, job: Job, *, label: str = "job") -> None:
        """Run ``job`` after this invocation's response, before the environment is frozen.

        For other backends (e.g. "send this SQS batch once the client has its answer").
        ``job`` runs in the contextvars context of this call (request_id and the
        Lambda keys stay on its log lines) and is cut at the invocation deadline.
        When post-response execution is impossible it is awaited here instead.
        """
        await self._defer(job, label=label, deadline=self._current_deadline())

    @contextmanager
    def watch(self, deadline: float | None, on_expiry: Callable[[], str]) -> Iterator[None]:
        """Around a sync task called on the runner thread (``run_tasks``): if it still runs at
        ``deadline``, the extension thread calls ``on_expiry`` (in this context: the request's
        keys) and ends the process, as the runner does for a sync task in a thread of its own."""
        if deadline is None:
            yield
            return
        with self._state:
            self._watched = _Watched(deadline, on_expiry, contextvars.copy_context())
            if deadline < self._wakes_at:  # usually not: the deadline is seconds away, the next look at most one
                self._wake_early = True
                self._state.notify_all()
        try:
            yield
        finally:
            with self._state:
                self._watched = None

    def _current_deadline(self) -> float | None:
        invocation = self._invocation
        return invocation.deadline if invocation is not None else None

    def _post_response_possible(self) -> bool:
        invocation = self._invocation
        return self.registered and invocation is not None and invocation.post_response and self._tracks_invocations()

    async def _defer(self, job: Job, *, label: str, deadline: float | None) -> None:
        deferred = _Deferred(job, contextvars.copy_context(), deadline, label)
        if not self._post_response_possible():
            self._explain_unreported_invocation()
            await self._run_one(deferred)
            return
        with self._state:
            self._outstanding += 1
            self._held.append(deferred)

    def _explain_unreported_invocation(self) -> None:
        """The one fallback not logged elsewhere: a handler that reported no invocation (logged once)."""
        if self._invocation is None and self.registered and not self._unreported_logged and self._tracks_invocations():
            self._unreported_logged = True
            log.warning(
                "lambda_extension.unavailable",
                reason="the handler reported no invocation (its context has no aws_request_id)",
                consequence="tasks run before the handler returns, so responses wait for them",
            )

    # --- runner thread ---------------------------------------------------------------

    def _run_jobs(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        while True:
            deferred = self._jobs.get()
            try:
                loop.run_until_complete(loop.create_task(self._run_one(deferred), context=deferred.context))
            except BaseException as exc:  # the runner must outlive any job
                log.error("lambda_extension.runner_error", exc_info=exc)
            finally:
                with self._state:
                    self._outstanding -= 1
                    self._release_if_done()

    async def _run_one(self, deferred: _Deferred) -> None:
        """Run a job; log (never raise) its failure. Tasks log themselves in ``run_tasks``."""
        try:
            async with asyncio.timeout(_seconds_until(deferred.deadline)):
                await deferred.job()
        except TimeoutError:
            log.error("lambda_extension.job_timed_out", job=deferred.label, error="invocation deadline reached")
        except TaskStuck as exc:
            _exit_stuck(str(exc))
        except Exception as exc:
            log.error("lambda_extension.job_failed", job=deferred.label, exc_info=exc)

    # --- releasing the environment (any thread) ----------------------------------------

    def _release_if_done(self) -> None:
        """Send ``event/next`` for the returned invocation once no job is left (holding ``_state``).

        Called by the thread that sees it done: the main thread as the handler returns, or the
        runner after the last job. The metrics are flushed first, once per invocation, before
        the freeze; then the environment may freeze.
        """
        request_id = self._returned
        if request_id is None or self._outstanding:
            return
        self._returned = None
        self._release(request_id)

    def _release(self, request_id: str) -> None:
        """``event/next`` for ``request_id``, then read its INVOKE if it is still unread (holding ``_state``).

        The INVOKE arrived before its handler ran, so reading it here takes microseconds, where
        waking the extension thread to read it would take the GIL from the response being posted.
        """
        if request_id in self._released or self._api is None:
            return
        self._released.append(request_id)
        if request_id in self._seen:
            self._seen.remove(request_id)
        else:
            self._unread += 1
        metrics.flush()
        try:
            self._api.send_next()
        except ExtensionsApiError as exc:
            log.error("lambda_extension.event_error", error=str(exc), function_request_id=request_id)
            self._broken = True
        else:
            self._read_arrived()
        if self._unread or self._broken:
            self._state.notify_all()  # the extension thread reads what has not arrived yet

    def _read_arrived(self) -> None:
        """Read the unread INVOKEs of released invocations that have arrived, unless another thread reads."""
        assert self._api is not None
        if not self._reading.acquire(blocking=False):
            return
        try:
            while self._unread and self._api.answer_waiting():
                self._note_read(self._api.read_event(timeout=READ_TIMEOUT_S))
        except ExtensionsApiError as exc:
            log.error("lambda_extension.event_error", error=str(exc))
            self._broken = True
        finally:
            self._reading.release()

    def _note_read(self, event: dict[str, Any]) -> str:
        """Book an INVOKE just read (holding ``_state``); its request id."""
        request_id = str(event.get("requestId"))
        if request_id in self._released:
            self._unread -= 1
        else:
            self._seen.append(request_id)  # read before its release
        return request_id

    # --- extension thread --------------------------------------------------------------

    def _serve_events(self, api: ExtensionsApiClient) -> None:
        """Watch for what no other thread would ever release, and read what they could not.

        The first INVOKE is read as it arrives, to learn whether the entry point reports its
        invocations. If it does, the thread then sleeps: each later INVOKE is read by the thread
        that releases its invocation. It wakes every ``WATCH_INTERVAL_S`` for an INVOKE whose
        handler never started and for jobs past the deadline.
        """
        event = self._read_or_give_up(api)
        if event is None:
            return
        if not self._tracks_invocations():
            self._release_each_invoke(api, event)
            return
        self._hold_for_handler(event)
        failures = 0
        while True:
            with self._state:
                timeout = self._watch_timeout()
                self._wakes_at = time.monotonic() + timeout
                self._state.wait_for(lambda: self._unread > 0 or self._broken or self._wake_early, timeout=timeout)
                self._wake_early = False
                unread, broken = self._unread, self._broken
            try:
                if broken:
                    self._reconnect(api, failures)
                elif unread:
                    with self._reading:
                        event = api.read_event()
                    with self._state:
                        self._note_read(event)
                else:
                    self._watch(api)
                failures = 0
            except ExtensionsApiError as exc:
                failures += 1
                log.error("lambda_extension.event_error", error=str(exc), attempt=failures)
                if failures >= 5:
                    self._unavailable(f"event/next keeps failing: {exc}")
                    return
                with self._state:
                    self._broken = True

    def _release_each_invoke(self, api: ExtensionsApiClient, event: dict[str, Any] | None) -> None:
        """An entry point that reports no invocation runs its jobs before returning: nothing to hold."""
        while event is not None:
            with self._state:
                self._release(self._note_read(event))
            event = self._read_or_give_up(api)

    def _read_or_give_up(self, api: ExtensionsApiClient) -> dict[str, Any] | None:
        """The next INVOKE, waiting for it; None, and tasks before the response from now on, if the API fails."""
        try:
            with self._reading:
                return api.read_event()
        except ExtensionsApiError as exc:
            self._unavailable(f"event/next failed: {exc}")
            return None

    def _reconnect(self, api: ExtensionsApiClient, failures: int) -> None:
        """After a failed call: a new connection, and ``event/next`` on it (the old one's answers are gone)."""
        time.sleep(0.05 * 2**failures)
        with self._reading:
            api.close()
            api.send_next()
        with self._state:
            self._broken, self._unread = False, 0

    def _watch_timeout(self) -> float:
        timeout = WATCH_INTERVAL_S
        pending = self._pending_deadline()
        if pending is not None:
            timeout = min(timeout, _seconds_until(pending + DRAIN_GRACE_S) or 0.0)
        if self._watched is not None:
            timeout = min(timeout, _seconds_until(self._watched.deadline) or 0.0)
        return timeout

    def _pending_deadline(self) -> float | None:
        """The deadline of the returned invocation still held for its jobs, if any."""
        return self._returned_deadline if self._returned is not None else None

    def _watch(self, api: ExtensionsApiClient) -> None:
        """No release for a while: a sync task or jobs stuck past the deadline, or an INVOKE no handler took."""
        with self._state:
            watched = self._watched
            if watched is not None and _seconds_until(watched.deadline) == 0.0:
                _exit_stuck(watched.context.run(watched.on_expiry))
            pending = self._pending_deadline()
            if pending is not None and _seconds_until(pending + DRAIN_GRACE_S) == 0.0:
                log.error("lambda_extension.drain_incomplete", outstanding_jobs=self._outstanding)
                request_id, self._returned = self._returned, None
                assert request_id is not None
                self._release(request_id)
                return
            if self._invocation is not None or self._returned is not None or self._unread:
                return
            with self._reading:
                event = api.read_event(timeout=READ_TIMEOUT_S) if api.answer_waiting() else None
        if event is not None:
            self._hold_for_handler(event)

    def _hold_for_handler(self, event: dict[str, Any]) -> None:
        """An INVOKE read before its release: give its handler ``HANDLER_START_GRACE_S`` to start.

        If the runtime failed before calling it (an event that is not JSON), nobody else would
        release the environment before the deadline.
        """
        with self._state:
            request_id = self._note_read(event)

            def started() -> bool:
                invocation = self._invocation
                return (
                    request_id in self._released
                    or self._returned == request_id
                    or (invocation is not None and invocation.request_id == request_id)
                )

            remaining = _seconds_until(_monotonic_from_epoch_ms(event.get("deadlineMs")))
            grace = HANDLER_START_GRACE_S if remaining is None else min(HANDLER_START_GRACE_S, remaining)
            self._wakes_at = time.monotonic() + grace
            if self._state.wait_for(started, timeout=grace):
                return
            self._given_up.append(request_id)
            log.warning("lambda_extension.handler_not_started", function_request_id=request_id, waited_s=grace)
            self._release(request_id)


def _exit_stuck(reason: str) -> None:
    """A sync task still runs at the deadline: frozen with the environment, it would run on into
    later invocations, and a thread cannot be stopped. Only ending the process stops it."""
    log.critical("lambda_extension.exiting", reason=reason, exit_code=EXIT_TASK_STUCK)
    lifecycle.after_lost_at_exit(metrics.flush)
    lifecycle.exit_process(EXIT_TASK_STUCK, reason)
