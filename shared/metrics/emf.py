"""CloudWatch Embedded Metric Format: metrics as JSON lines on stdout, no API call.

The document has the shape Powertools for AWS Lambda's Metrics prints (``_aws.Timestamp``,
one ``CloudWatchMetrics`` directive with ``Namespace``, ``Dimensions`` and ``Metrics``, each
value a root member), one per ``(service, task, backend)`` seen since the last flush, each
with the dimension sets of ``names.DIMENSION_SETS``. Counts are summed; durations are kept as
a list of values (CloudWatch computes p50/p95 from them), at most 100 per document as the
specification allows: a 100th value flushes its document early.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from shared.metrics.names import DIMENSION_SETS, DIMENSIONS, DURATION, DURATION_UNIT

MAX_VALUES = 100
EVENT = "task.metrics"

Labels = tuple[str, str, str]


class _MetricSet:
    __slots__ = ("counts", "durations")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.durations: list[float] = []


class EmfRecorder:
    def __init__(self, namespace: str, stream: TextIO | None = None) -> None:
        self.namespace = namespace
        self._stream = stream
        self._sets: dict[Labels, _MetricSet] = {}
        self._lock = threading.Lock()

    def _set(self, labels: Labels) -> _MetricSet:
        metric_set = self._sets.get(labels)
        if metric_set is None:
            metric_set = self._sets[labels] = _MetricSet()
        return metric_set

    def count(self, metric: str, labels: Labels) -> None:
        with self._lock:
            counts = self._set(labels).counts
            counts[metric] = counts.get(metric, 0) + 1

    def duration(self, labels: Labels, milliseconds: float) -> None:
        with self._lock:
            metric_set = self._set(labels)
            metric_set.durations.append(milliseconds)
            if len(metric_set.durations) < MAX_VALUES:
                return
            full = self._sets.pop(labels)
        self._write([self.document(labels, full)])

    def in_flight(self, labels: Labels, delta: int) -> None:
        return None

    def flush(self) -> None:
        with self._lock:
            sets, self._sets = self._sets, {}
        if sets:
            self._write([self.document(labels, metric_set) for labels, metric_set in sets.items()])

    def document(self, labels: Labels, metric_set: _MetricSet) -> dict[str, Any]:
        metrics: list[dict[str, str]] = [{"Name": name, "Unit": "Count"} for name in metric_set.counts]
        values: dict[str, Any] = dict(metric_set.counts)
        if metric_set.durations:
            metrics.append({"Name": DURATION, "Unit": DURATION_UNIT})
            values[DURATION] = metric_set.durations
        now_ms = int(time.time() * 1000)
        return {
            "_aws": {
                "Timestamp": now_ms,
                "CloudWatchMetrics": [
                    {
                        "Namespace": self.namespace,
                        "Dimensions": [list(dimension_set) for dimension_set in DIMENSION_SETS],
                        "Metrics": metrics,
                    }
                ],
            },
            "event": EVENT,
            "level": "info",
            "timestamp": datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            **dict(zip(DIMENSIONS, labels, strict=True)),
            **values,
        }

    def _write(self, documents: list[dict[str, Any]]) -> None:
        stream = self._stream or sys.stdout
        stream.write("".join(orjson.dumps(document).decode() + "\n" for document in documents))
        stream.flush()
