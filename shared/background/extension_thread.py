"""The extension thread: reads the Extensions API and watches for what no other thread would release.

It sleeps while invocations come and go (each is released by the thread that finishes it), and
wakes every ``WATCH_INTERVAL_S`` for an INVOKE no handler took and for jobs stuck past the deadline.
"""

from __future__ import annotations

import time
from typing import Any

from shared.background.extension_release import Releasing
from shared.background.extension_state import (
    DRAIN_GRACE_S,
    HANDLER_START_GRACE_S,
    READ_TIMEOUT_S,
    WATCH_INTERVAL_S,
    exit_stuck,
    log,
    monotonic_from_epoch_ms,
    seconds_until,
)
from shared.background.extensions_api import ExtensionsApiClient, ExtensionsApiError


class ExtensionThread(Releasing):
    """Reads what the releasing threads could not, and releases what they never would."""

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
            timeout = min(timeout, seconds_until(pending + DRAIN_GRACE_S) or 0.0)
        if self._watched is not None:
            timeout = min(timeout, seconds_until(self._watched.deadline) or 0.0)
        return timeout

    def _pending_deadline(self) -> float | None:
        """The deadline of the returned invocation still held for its jobs, if any."""
        return self._returned_deadline if self._returned is not None else None

    def _watch(self, api: ExtensionsApiClient) -> None:
        """No release for a while: a sync task or jobs stuck past the deadline, or an INVOKE no handler took."""
        with self._state:
            watched = self._watched
            if watched is not None and seconds_until(watched.deadline) == 0.0:
                exit_stuck(watched.context.run(watched.on_expiry))
            pending = self._pending_deadline()
            if pending is not None and seconds_until(pending + DRAIN_GRACE_S) == 0.0:
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

            remaining = seconds_until(monotonic_from_epoch_ms(event.get("deadlineMs")))
            grace = HANDLER_START_GRACE_S if remaining is None else min(HANDLER_START_GRACE_S, remaining)
            self._wakes_at = time.monotonic() + grace
            if self._state.wait_for(started, timeout=grace):
                return
            self._given_up.append(request_id)
            log.warning("lambda_extension.handler_not_started", function_request_id=request_id, waited_s=grace)
            self._release(request_id)
