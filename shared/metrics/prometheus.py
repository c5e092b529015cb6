"""Task metrics for Prometheus (prometheus-client), served on ``/metrics``; never imported on Lambda.

The gateway (``python -m shared.serve all``) serves ``/metrics`` on its own port; the container
worker, which has no HTTP server, starts prometheus-client's own on ``WORKER_METRICS_PORT``.

One process per container is what ``shared.serve`` runs. Under ``uvicorn --workers N`` (or any
pre-fork server), set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory: prometheus-client then
keeps each worker's values in files there and ``/metrics`` sums them (the in-flight gauge adds up
the values the workers left: a worker killed mid-task leaves its runs counted).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections import deque
from typing import Any, ClassVar

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.requests import Request
from starlette.responses import Response

from shared.metrics.names import COUNTERS, DIMENSIONS, DURATION, IN_FLIGHT, RETRIED, prometheus_name

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

Labels = tuple[str, str, str]


class _ApplyPending:
    """A collector with no metrics of its own, registered before the task metrics: every collection
    of the registry (``/metrics``, ``REGISTRY.get_sample_value``) first applies what is pending."""

    def __init__(self, recorder: PrometheusRecorder) -> None:
        self.recorder = recorder

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        self.recorder.apply_pending()
        return []


class PrometheusRecorder:
    """prometheus-client's metrics, registered once per process in its default registry.

    In one process, an event only appends its update to a queue (a lock-free ``deque.append``):
    the updates are applied, summed per series, when the registry is collected (a scrape) or
    every ``PENDING_LIMIT`` updates. Six metric updates per task, each through prometheus-client's
    checks and a lock, cost more than anything else the task layer does per request. With
    ``PROMETHEUS_MULTIPROC_DIR`` (several processes) each update is applied at once: a scrape of
    one process cannot apply another's queue.
    """

    _instance: ClassVar[PrometheusRecorder | None] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()
    PENDING_LIMIT: ClassVar[int] = 4096

    def __init__(self) -> None:
        self._pending: deque[tuple[str, Labels, float]] = deque()
        self._deferred = not os.environ.get(MULTIPROCESS_ENV)
        if self._deferred:
            REGISTRY.register(_ApplyPending(self))
        descriptions = {metric: f"Tasks logged as {event}" for event, metric in COUNTERS.items()}
        descriptions[RETRIED] = "Tasks started again after a failed attempt (task.started with attempt > 1)"
        self._counters = {metric: Counter(metric, text, DIMENSIONS) for metric, text in descriptions.items()}
        self._duration = Histogram(
            prometheus_name(DURATION), "Task run time, from task.started to its end", DIMENSIONS,
            buckets=DURATION_BUCKETS_S,
        )  # fmt: skip
        self._in_flight = Gauge(IN_FLIGHT, "Tasks running now", DIMENSIONS, multiprocess_mode="livesum")
        self._children: dict[tuple[str, Labels], Any] = {}

    @classmethod
    def get(cls) -> PrometheusRecorder:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def count(self, metric: str, labels: Labels) -> None:
        self._update(metric, labels, 1.0)

    def duration(self, labels: Labels, milliseconds: float) -> None:
        self._update(DURATION, labels, milliseconds / 1000)

    def in_flight(self, labels: Labels, delta: int) -> None:
        self._update(IN_FLIGHT, labels, delta)

    def _update(self, metric: str, labels: Labels, value: float) -> None:
        if not self._deferred:
            self._apply(metric, labels, value)
            return
        pending = self._pending
        pending.append((metric, labels, value))
        if len(pending) >= self.PENDING_LIMIT:
            self.apply_pending()

    def apply_pending(self) -> None:
        """Apply the queued updates: counters and the gauge once per series (summed), each duration observed."""
        pending = self._pending
        sums: dict[tuple[str, Labels], float] = {}
        durations: list[tuple[Labels, float]] = []
        while True:
            try:
                metric, labels, value = pending.popleft()  # atomic: events appended meanwhile stay queued
            except IndexError:
                break
            if metric == DURATION:
                durations.append((labels, value))
            else:
                key = (metric, labels)
                sums[key] = sums.get(key, 0.0) + value
        for (metric, labels), value in sums.items():
            self._apply(metric, labels, value)
        for labels, value in durations:
            self._apply(DURATION, labels, value)

    def _apply(self, metric: str, labels: Labels, value: float) -> None:
        child = self._child(metric, labels)  # created even for a net zero: the series shows 0
        if metric == DURATION:
            child.observe(value)
        elif value:
            child.inc(value)

    def _child(self, metric: str, labels: Labels) -> Any:
        """The labelled metric, kept: ``labels()`` takes a lock and builds a key on every call."""
        child = self._children.get((metric, labels))
        if child is None:
            parent = self._duration if metric == DURATION else self._in_flight if metric == IN_FLIGHT else None
            child = (parent or self._counters[metric]).labels(*labels)
            self._children[(metric, labels)] = child
        return child

    def flush(self) -> None:
        return None


def require_shared_values() -> None:
    """Warn, at start-up, a child process (``uvicorn --workers N``) without ``PROMETHEUS_MULTIPROC_DIR``.

    Each process would count only what it served, and ``/metrics`` would answer with whichever
    process took the scrape: numbers that look right and are not. A warning, not a refusal:
    ``uvicorn --reload`` runs its one server in a child process too.
    """
    if multiprocessing.parent_process() is not None and not os.environ.get(MULTIPROCESS_ENV):
        structlog.get_logger("shared.metrics").warning(
            "metrics.not_shared",
            reason="this server process was started by another (uvicorn --workers N, or --reload)",
            consequence="with several workers, /metrics shows only the counts of the process that answers",
            fix="set PROMETHEUS_MULTIPROC_DIR to an empty directory the workers share",
        )


def registry() -> CollectorRegistry:
    """What ``/metrics`` shows: this process's registry, or every worker's files in multiprocess mode."""
    PrometheusRecorder.get()  # the task metrics appear (at zero samples) before the first task
    if os.environ.get(MULTIPROCESS_ENV):
        collected = CollectorRegistry()
        MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
        return collected
    return REGISTRY


async def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics`` in Prometheus' text format."""
    return Response(generate_latest(registry()), media_type=CONTENT_TYPE_LATEST)


def start_http_server(port: int, host: str) -> None:
    """prometheus-client's own server (a daemon thread), for processes without one (the worker)."""
    try:
        _start_http_server(port, addr=host, registry=registry())
    except OSError as exc:
        raise SystemExit(
            f"cannot serve /metrics on {host}:{port} ({exc}); set WORKER_METRICS_PORT to a free port, or 0 for none"
        ) from exc
