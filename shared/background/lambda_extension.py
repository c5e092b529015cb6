"""Run an invocation's tasks after its response, before Lambda freezes the environment.

Lambda freezes an execution environment once the runtime has posted the response
*and* every registered extension has asked for its next event. This backend is an
*internal extension*: a thread of the function's own process that registers with
the Extensions API during init (when the handler module is imported) and, on each
INVOKE, asks for the next event only when the handler has returned and every job
deferred during the invocation has run::

    main thread (awslambdaric)     extension thread             runner thread
    GET  runtime/invocation/next   GET extension/event/next
    handler(event, context)          <- INVOKE i
      app -> dispatch(tasks) -------------------------------->  run_tasks(tasks)
    handler returns ------------->  handler i returned            ...
    POST .../response (client has it)                             ...
                                   (reads the answer)            done: GET extension/event/next
                                                                 -> environment may freeze

``event/next`` is sent by whichever thread sees the invocation done (the main thread as the
handler returns if no job is left, else the runner after the last one; the extension thread
itself when it gets there first, or after a timeout), on one kept-alive connection; the
extension thread only reads the answer, so no thread is woken between response and freeze.

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
from shared.background.extensions_api import ExtensionsApiClient, ExtensionsApiError
from shared.background.runner import EXIT_TASK_STUCK, TaskStuck, run_tasks
from shared.background.task import Job, QueuedTask
from shared.logs import get_logger
from shared.settings import get_settings

log = get_logger("shared.background.lambda_extension")

DRAIN_GRACE_S = 1.0
"""Past the invocation deadline, how long to keep waiting for jobs before letting go."""

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
        self._invocation: _Invocation | None = None
        self._returned: deque[str] = deque(maxlen=64)
        self._given_up: str | None = None
        self._tracked: bool | None = None
        self._unreported_logged = False
        self._outstanding = 0
        self._jobs: queue.SimpleQueue[_Deferred] = queue.SimpleQueue()
        self._api: ExtensionsApiClient | None = None
        self._serving: str | None = None  # the INVOKE the extension thread holds the environment for
        self._serving_returned = False
        self._asked = True  # event/next sent for it (by whichever thread saw it done first)

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
        with backend._state:
            backend._invocation = _Invocation(request_id, deadline, post_response=backend._given_up != request_id)
            backend._state.notify_all()
        try:
            yield
        finally:
            with backend._state:
                backend._invocation = None
                backend._returned.append(request_id)
                if backend._serving == request_id:
                    backend._serving_returned = True
                    backend._release_if_done()
                backend._state.notify_all()

    # --- Backend protocol --------------------------------------------------------------

    def accept(self, task: QueuedTask) -> None:
        return None

    async def dispatch(self, tasks: Sequence[QueuedTask]) -> None:
        deadline, name = self._current_deadline(), self.name

        async def run() -> None:
            await run_tasks(tasks, name, deadline=deadline)

        await self._defer(run, label="tasks", deadline=None)

    async def defer(self, job: Job, *, label: str = "job") -> None:
        """Run ``job`` after this invocation's response, before the environment is frozen.

        For other backends (e.g. "send this SQS batch once the client has its answer").
        ``job`` runs in the contextvars context of this call (request_id and the
        Lambda keys stay on its log lines) and is cut at the invocation deadline.
        When post-response execution is impossible it is awaited here instead.
        """
        await self._defer(job, label=label, deadline=self._current_deadline())

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
        self._jobs.put(deferred)

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
                    self._state.notify_all()

    async def _run_one(self, deferred: _Deferred) -> None:
        """Run a job; log (never raise) its failure. Tasks log themselves in ``run_tasks``."""
        try:
            async with asyncio.timeout(_seconds_until(deferred.deadline)):
                await deferred.job()
        except TimeoutError:
            log.error("lambda_extension.job_timed_out", job=deferred.label, error="invocation deadline reached")
        except TaskStuck as exc:
            # Frozen with the environment, its thread would run on into later invocations.
            metrics.flush()
            log.critical("lambda_extension.exiting", reason=str(exc), exit_code=EXIT_TASK_STUCK)
            os._exit(EXIT_TASK_STUCK)
        except Exception as exc:
            log.error("lambda_extension.job_failed", job=deferred.label, exc_info=exc)

    # --- extension thread --------------------------------------------------------------

    def _release_if_done(self) -> None:
        """Ask for the next event from the thread that saw the invocation done (holding ``_state``).

        The handler returned and no job is left: flush the metrics and send ``event/next`` at
        once, rather than wake the extension thread to do it, a hand-over Lambda would bill.
        """
        if self._asked or not self._serving_returned or self._outstanding or self.extension_id is None:
            return
        metrics.flush()
        try:
            assert self._api is not None
            self._api.ask_next(self.extension_id)
        except ExtensionsApiError:
            return  # the extension thread asks itself, and logs what fails
        self._asked = True

    def _ask_next(self, api: ExtensionsApiClient) -> None:
        """The extension thread's own ``event/next``, unless another thread already sent it."""
        assert self.extension_id is not None
        with self._state:
            if self._asked:
                return
            metrics.flush()  # once per invocation, after its tasks, before the freeze
            try:
                api.ask_next(self.extension_id)
            finally:
                self._asked = True  # sent, or the error below sends it again

    def _serve_events(self, api: ExtensionsApiClient) -> None:
        assert self.extension_id is not None
        failures = 0
        ask = True  # False once another thread or _ask_next sent event/next: only the answer is read
        while True:
            try:
                if ask:
                    api.ask_next(self.extension_id)
                    ask = False
                event = api.read_event()
            except ExtensionsApiError as exc:
                ask = True
                failures += 1
                log.error("lambda_extension.event_error", error=str(exc), attempt=failures)
                if failures >= 5:
                    self._unavailable(f"event/next keeps failing: {exc}")
                    return
                time.sleep(0.05 * 2**failures)
                continue
            failures = 0
            deadline = _monotonic_from_epoch_ms(event.get("deadlineMs"))
            event_type = event.get("eventType")
            if event_type == "INVOKE":
                request_id = str(event.get("requestId"))
                with self._state:
                    self._serving, self._asked = request_id, False
                    self._serving_returned = request_id in self._returned
                if self._tracks_invocations():
                    self._await_handler(request_id, deadline)
                self._await_jobs(deadline)
                try:
                    self._ask_next(api)
                except ExtensionsApiError as exc:
                    failures += 1
                    log.error("lambda_extension.event_error", error=str(exc), attempt=failures)
                    ask = True
            elif event_type == "SHUTDOWN":  # only if Lambda ever delivers it to internal extensions
                self._await_jobs(deadline)
                log.info("lambda_extension.shutdown", reason=event.get("shutdownReason"))
                return

    def _await_handler(self, request_id: str, deadline: float | None) -> None:
        def started() -> bool:
            invocation = self._invocation
            return request_id in self._returned or (invocation is not None and invocation.request_id == request_id)

        remaining = _seconds_until(deadline)
        grace = HANDLER_START_GRACE_S if remaining is None else min(HANDLER_START_GRACE_S, remaining)
        with self._state:
            if not self._state.wait_for(started, timeout=grace):
                self._given_up = request_id
                log.warning("lambda_extension.handler_not_started", function_request_id=request_id, waited_s=grace)
                return
            if self._state.wait_for(lambda: request_id in self._returned, timeout=_seconds_until(deadline)):
                self._returned.remove(request_id)
                return
        log.warning("lambda_extension.handler_not_returned", function_request_id=request_id)

    def _await_jobs(self, deadline: float | None) -> None:
        timeout = None if deadline is None else _seconds_until(deadline + DRAIN_GRACE_S)
        with self._state:
            if self._state.wait_for(lambda: self._outstanding == 0, timeout=timeout):
                return
            outstanding = self._outstanding
        log.error("lambda_extension.drain_incomplete", outstanding_jobs=outstanding)
