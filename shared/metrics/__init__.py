"""Task metrics, counted from the task events themselves.

Counted in one place every log line passes through: ``count_task_events``, the first processor
of the log pipeline (``shared.logs``), so every ``task.*`` event is counted whichever module
logged it, and whatever ``LOG_LEVEL`` filters out of the logs. The recorder depends on the
platform (``METRICS``, default ``auto``):

- on Lambda, ``emf``: CloudWatch Embedded Metric Format lines on stdout, accumulated during an
  invocation and printed once at its end (``flush``), no API call;
- elsewhere, ``prometheus``: prometheus-client's counters, histogram and gauge, served on
  ``/metrics`` (``shared.metrics.prometheus``). Never imported on Lambda.

Names come from ``shared.metrics.names``, which ``template.yaml``'s test reads too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from shared import tracing
from shared.log_context import bound
from shared.metrics.names import COUNTERS, DEFAULT_NAMESPACE, RETRIED, TIMED_EVENTS
from shared.settings import get_settings, running_on_lambda

if TYPE_CHECKING:  # typing.Protocol costs a cold start more than this whole module
    from typing import Protocol

    Labels = tuple[str, str, str]

    class Recorder(Protocol):
        def count(self, metric: str, labels: Labels) -> None: ...

        def duration(self, labels: Labels, milliseconds: float) -> None: ...

        def in_flight(self, labels: Labels, delta: int) -> None: ...

        def flush(self) -> None: ...


class _Off:
    def count(self, metric: str, labels: Labels) -> None:
        return None

    def duration(self, labels: Labels, milliseconds: float) -> None:
        return None

    def in_flight(self, labels: Labels, delta: int) -> None:
        return None

    def flush(self) -> None:
        return None


_recorder: Recorder | None = None
_lock = threading.Lock()
_extension_flushes = False


def recorder() -> Recorder:
    """The process's recorder, chosen on first use from ``METRICS``."""
    global _recorder
    if _recorder is None:
        with _lock:
            if _recorder is None:
                _recorder = _choose()
    return _recorder


def _choose() -> Recorder:
    settings = get_settings()
    choice = settings.metrics
    if choice == "auto":
        choice = "emf" if running_on_lambda() else "prometheus"
    if choice == "emf":
        from shared.metrics.emf import EmfRecorder

        return EmfRecorder(settings.metrics_namespace or DEFAULT_NAMESPACE)
    if choice == "prometheus":
        from shared.metrics.prometheus import PrometheusRecorder

        return PrometheusRecorder.get()
    return _Off()


def reset() -> None:
    """Choose the recorder again on next use (tests that change ``METRICS``)."""
    global _recorder, _extension_flushes
    _recorder, _extension_flushes = None, False


def _service(fields: Mapping[str, Any]) -> str:
    service = fields.get("service") or bound("service")
    return str(service or get_settings().service_name)


def record(event: str, fields: Mapping[str, Any]) -> None:
    """Count one task event (``task.started``, ... with its log keys); other events are ignored.

    Task spans (``shared.tracing``, only with an OpenTelemetry SDK) hang off the same events.
    """
    metric = COUNTERS.get(event)
    if metric is None:
        return
    tracing.on_task_event(event, fields)
    sink = _recorder or recorder()
    service, backend = _service(fields), str(fields.get("backend", ""))
    task = fields.get("task")
    for name in (task,) if task is not None else fields.get("tasks") or ("unknown",):
        labels = (service, str(name), backend)
        sink.count(metric, labels)
        if event == "task.started":
            if fields.get("attempt", 1) > 1:
                sink.count(RETRIED, labels)
            sink.in_flight(labels, 1)
        elif event in TIMED_EVENTS and fields.get("duration_ms") is not None:
            sink.duration(labels, float(fields["duration_ms"]))
            sink.in_flight(labels, -1)


def count_task_events(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The log pipeline's first processor: count each task event (``record``), pass every line on."""
    event = event_dict.get("event")
    if event.__class__ is str and event.startswith("task."):
        record(event, event_dict)
    return event_dict


# --- Lambda: one flush per invocation -------------------------------------------------------


def flush() -> None:
    """Print what was recorded since the last flush (EMF); a no-op for Prometheus."""
    if _recorder is not None:
        _recorder.flush()


def extension_flushes(enabled: bool) -> None:
    """The post-response extension flushes after each invocation's tasks (it registered)."""
    global _extension_flushes
    _extension_flushes = enabled


@contextmanager
def invocation() -> Iterator[None]:
    """Around a Lambda handler: flush at its end, unless the extension will after the tasks."""
    try:
        yield
    finally:
        if not _extension_flushes:
            flush()
