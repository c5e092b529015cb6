"""Releasing the environment: ``event/next`` for an invocation once its handler returned and no job is left.

Called from whichever thread sees it done (the main thread as the handler returns, or the runner
after the last job), so no thread is woken between the response and the freeze.
"""

from __future__ import annotations

from typing import Any

from shared import metrics
from shared.background.extension_state import READ_TIMEOUT_S, ExtensionState, log
from shared.background.extensions_api import ExtensionsApiError


class Releasing(ExtensionState):
    """``event/next`` once per invocation, after its jobs; the metrics flushed first."""

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
