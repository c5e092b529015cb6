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

import contextvars
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar

from shared import metrics
from shared.background.extension_runner import RunnerThread
from shared.background.extension_state import Deferred, Invocation, log
from shared.background.extension_thread import ExtensionThread
from shared.background.extensions_api import ExtensionsApiClient, ExtensionsApiError
from shared.background.runner import run_tasks
from shared.background.task import Job, QueuedTask
from shared.settings import get_settings

BEFORE_RESPONSE = "lambda-before-response"
"""The ``backend`` of task lines when post-response execution is impossible (the reason is
logged once, ``lambda_extension.unavailable``): they ran before the handler returned."""


class LambdaExtensionBackend(ExtensionThread, RunnerThread):
    """Tasks run after the response, in the same environment, before it is frozen."""

    extension_name = "fastapi-background-tasks"

    _instance: ClassVar[LambdaExtensionBackend | None] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()

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

    @property
    def name(self) -> str:
        """``lambda-extension`` when this invocation's tasks run after its response, else ``lambda-before-response``."""
        return "lambda-extension" if self._post_response_possible() else BEFORE_RESPONSE

    # --- what the Lambda handler tells us ------------------------------------------

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
            backend._invocation = Invocation(request_id, deadline, post_response=request_id not in backend._given_up)
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

    def _current_deadline(self) -> float | None:
        invocation = self._invocation
        return invocation.deadline if invocation is not None else None

    def _post_response_possible(self) -> bool:
        invocation = self._invocation
        return self.registered and invocation is not None and invocation.post_response and self._tracks_invocations()

    async def _defer(self, job: Job, *, label: str, deadline: float | None) -> None:
        deferred = Deferred(job, contextvars.copy_context(), deadline, label)
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
