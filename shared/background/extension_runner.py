"""The runner thread: runs each invocation's deferred jobs after its response, on one event loop."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from shared.background.errors import TaskStuck
from shared.background.extension_release import Releasing
from shared.background.extension_state import Deferred, Watched, exit_stuck, log, seconds_until


class RunnerThread(Releasing):
    """Runs the jobs the handler deferred, one at a time, each cut at its invocation's deadline."""

    @contextmanager
    def watch(self, deadline: float | None, on_expiry: Callable[[], str]) -> Iterator[None]:
        """Around a sync task called on the runner thread (``run_tasks``): if it still runs at
        ``deadline``, the extension thread calls ``on_expiry`` (in this context: the request's
        keys) and ends the process, as the runner does for a sync task in a thread of its own."""
        if deadline is None:
            yield
            return
        with self._state:
            self._watched = Watched(deadline, on_expiry, contextvars.copy_context())
            if deadline < self._wakes_at:  # usually not: the deadline is seconds away, the next look at most one
                self._wake_early = True
                self._state.notify_all()
        try:
            yield
        finally:
            with self._state:
                self._watched = None

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

    async def _run_one(self, deferred: Deferred) -> None:
        """Run a job; log (never raise) its failure. Tasks log themselves in ``run_tasks``."""
        try:
            async with asyncio.timeout(seconds_until(deferred.deadline)):
                await deferred.job()
        except TimeoutError:
            log.error("lambda_extension.job_timed_out", job=deferred.label, error="invocation deadline reached")
        except TaskStuck as exc:
            exit_stuck(str(exc))
        except Exception as exc:
            log.error("lambda_extension.job_failed", job=deferred.label, exc_info=exc)
