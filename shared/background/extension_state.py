"""What the Lambda extension's threads share: its state, the times it keeps, and how it gives up.

``LambdaExtensionBackend`` (``lambda_extension``) is built from one class per job, each over this
state: releasing the environment (``extension_release``), the runner thread that runs the jobs
(``extension_runner``) and the extension thread that reads the Extensions API (``extension_thread``).
Every field is read and written holding ``_state`` (a condition), unless its comment says otherwise.
"""

from __future__ import annotations

import contextvars
import inspect
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from shared import metrics
from shared.background import lifecycle
from shared.background.errors import EXIT_TASK_STUCK
from shared.background.extensions_api import ExtensionsApiClient
from shared.background.task import Job
from shared.logs import get_logger

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


# Plain classes, not dataclasses: defined at every Lambda cold start, where a dataclass costs a millisecond.
class Deferred:
    __slots__ = ("context", "deadline", "job", "label")

    def __init__(self, job: Job, context: contextvars.Context, deadline: float | None, label: str) -> None:
        self.job = job
        self.context = context
        self.deadline = deadline
        self.label = label


class Watched:
    """A sync task running on the runner thread, and what to log if it still runs at the deadline."""

    __slots__ = ("context", "deadline", "on_expiry")

    def __init__(self, deadline: float, on_expiry: Callable[[], str], context: contextvars.Context) -> None:
        self.deadline = deadline
        self.on_expiry = on_expiry
        self.context = context


class Invocation:
    __slots__ = ("deadline", "post_response", "request_id")

    def __init__(self, request_id: str, deadline: float | None, post_response: bool) -> None:
        self.request_id = request_id
        self.deadline = deadline
        self.post_response = post_response

    def __repr__(self) -> str:
        return f"Invocation({self.request_id!r}, deadline={self.deadline!r}, post_response={self.post_response})"


def lambda_entry_point() -> Callable[..., Any] | None:
    """The object Lambda calls: ``_HANDLER`` (``module.attribute``), else the runtime client's argument."""
    spec = os.environ.get("_HANDLER") or (sys.argv[1] if len(sys.argv) > 1 else "")
    module_name, _, attribute = spec.rpartition(".")
    module = sys.modules.get(module_name.replace("/", "."))
    entry_point = getattr(module, attribute, None) if module is not None and attribute else None
    return entry_point if callable(entry_point) else None


def seconds_until(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def monotonic_from_epoch_ms(epoch_ms: Any) -> float | None:
    if not isinstance(epoch_ms, int | float):
        return None
    return time.monotonic() + (epoch_ms / 1000 - time.time())


class ExtensionState:
    """The fields the extension's jobs share, and the two facts each needs: registered, and tracked."""

    def __init__(self, runtime_api: str | None) -> None:
        self.runtime_api = runtime_api
        self.extension_id: str | None = None
        self.unavailable_reason: str | None = None
        self._state = threading.Condition()
        self._invocation: Invocation | None = None  # the handler running now
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
        self._jobs: queue.SimpleQueue[Deferred] = queue.SimpleQueue()
        self._held: list[Deferred] = []  # the running handler's jobs: the runner gets them as it returns
        self._api: ExtensionsApiClient | None = None
        self._watched: Watched | None = None  # a sync task running on the runner thread
        self._wakes_at = float("inf")  # when the extension thread looks again (inf: not known)
        self._wake_early = False

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
                entry_point = lambda_entry_point()
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


def exit_stuck(reason: str) -> None:
    """A sync task still runs at the deadline: frozen with the environment, it would run on into
    later invocations, and a thread cannot be stopped. Only ending the process stops it."""
    log.critical("lambda_extension.exiting", reason=reason, exit_code=EXIT_TASK_STUCK)
    lifecycle.after_lost_at_exit(metrics.flush)
    lifecycle.exit_process(EXIT_TASK_STUCK, reason)
