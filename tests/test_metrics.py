"""Task metrics: CloudWatch EMF lines on Lambda, Prometheus' /metrics in containers, one set of names."""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from infra.lambda_events import http_api_event
from infra.runtime_api import lambda_environment
from infra.servers import ROOT, start_function
from shared import metrics
from shared.metrics import names
from shared.metrics.emf import EmfRecorder

TEST_APP = "tests.support.lambda_app.handler"
NAMESPACE = "tests-namespace"

# The JSON schema of the CloudWatch embedded metric format specification ("Embedded metric
# format example and JSON schema", Amazon CloudWatch User Guide), written down here.
# Its "$id" members are draft-07 style, so it is checked as a draft-07 schema.
EMF_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "title": "Root Node",
    "required": ["_aws"],
    "properties": {
        "_aws": {
            "$id": "#/properties/_aws",
            "type": "object",
            "title": "Metadata",
            "required": ["Timestamp", "CloudWatchMetrics"],
            "properties": {
                "Timestamp": {"$id": "#/properties/_aws/properties/Timestamp", "type": "integer"},
                "CloudWatchMetrics": {
                    "$id": "#/properties/_aws/properties/CloudWatchMetrics",
                    "type": "array",
                    "title": "MetricDirectives",
                    "items": {
                        "type": "object",
                        "title": "MetricDirective",
                        "required": ["Namespace", "Dimensions", "Metrics"],
                        "properties": {
                            "Namespace": {"type": "string", "pattern": "^(.*)$", "minLength": 1, "maxLength": 255},
                            "Dimensions": {
                                "type": "array",
                                "title": "The Dimensions Schema",
                                "minItems": 1,
                                "items": {
                                    "type": "array",
                                    "title": "DimensionSet",
                                    "minItems": 0,
                                    "maxItems": 9,
                                    "items": {
                                        "type": "string",
                                        "title": "DimensionReference",
                                        "pattern": "^(.*)$",
                                        "minLength": 1,
                                        "maxLength": 255,
                                    },
                                },
                            },
                            "Metrics": {
                                "type": "array",
                                "title": "MetricDefinitions",
                                "items": {
                                    "type": "object",
                                    "title": "MetricDefinition",
                                    "required": ["Name"],
                                    "properties": {
                                        "Name": {
                                            "type": "string",
                                            "pattern": "^(.*)$",
                                            "minLength": 1,
                                            "maxLength": 255,
                                        },
                                        "Unit": {
                                            "type": "string",
                                            "pattern": (
                                                "^(Seconds|Microseconds|Milliseconds|Bytes|Kilobytes|Megabytes|"
                                                "Gigabytes|Terabytes|Bits|Kilobits|Megabits|Gigabits|Terabits|"
                                                "Percent|Count|Bytes\\/Second|Kilobytes\\/Second|"
                                                "Megabytes\\/Second|Gigabytes\\/Second|Terabytes\\/Second|"
                                                "Bits\\/Second|Kilobits\\/Second|Megabits\\/Second|"
                                                "Gigabits\\/Second|Terabits\\/Second|Count\\/Second|None)$"
                                            ),
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}


def assert_valid_emf(document: dict[str, Any]) -> None:
    """The schema, plus the specification's rules a schema cannot say (targets on the root node)."""
    jsonschema.Draft7Validator.check_schema(EMF_SCHEMA)
    jsonschema.Draft7Validator(EMF_SCHEMA).validate(document)
    for directive in document["_aws"]["CloudWatchMetrics"]:
        assert len(directive["Metrics"]) <= 100
        for dimension_set in directive["Dimensions"]:
            for key in dimension_set:
                assert isinstance(document[key], str), f"dimension {key} must be a string member of the root"
        for metric in directive["Metrics"]:
            value = document[metric["Name"]]
            values = value if isinstance(value, list) else [value]
            assert 1 <= len(values) <= 100
            assert all(isinstance(v, int | float) and math.isfinite(v) for v in values), metric


def emf_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if "_aws" in line]


@pytest.fixture(autouse=True)
def fresh_recorder() -> Iterator[None]:
    metrics.reset()
    yield
    metrics.reset()


# --- Lambda: EMF ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["lambda-extension", "inline"])
def test_an_invocation_with_two_tasks_one_failing_prints_one_emf_line_cloudwatch_accepts(
    backend: str, tmp_path: Path
) -> None:
    env = {"NOTIFICATION_LOG_PATH": str(tmp_path / "log"), "POWERTOOLS_METRICS_NAMESPACE": NAMESPACE}
    with lambda_environment(TEST_APP, env={**env, "TASK_BACKEND": backend}) as function:
        first = function.invoke(http_api_event("/one-fails/a")).wait_free()
        lines_after_first = function.logs()
        second = function.invoke(http_api_event("/one-fails/b")).wait_free()
        lines = function.logs()
        # Two different tasks: one document each (a document has one value per dimension), one flush.
        function.invoke(http_api_event("/fail/c")).wait_free()
        by_task = {line["task"]: line for line in emf_lines(function.logs())[len(emf_lines(lines)) :]}

    assert first.result["statusCode"] == second.result["statusCode"] == 200
    [document] = emf_lines(lines_after_first)  # once per invocation, not once per task
    assert_valid_emf(document)
    assert len(emf_lines(lines)) == 2, "the second invocation has its own line, not a running total"
    # Printed after the invocation's last task ended (an EMF line at the handler's return would miss them).
    events = [line.get("event") for line in lines_after_first]
    assert events.index("task.metrics") > max(i for i, e in enumerate(events) if e in ("task.failed", "task.succeeded"))

    assert (document["event"], document["level"]) == ("task.metrics", "info"), "the log schema's keys too"
    assert document["timestamp"].endswith("Z")
    [directive] = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == NAMESPACE
    assert directive["Dimensions"] == [["service", "task", "backend"], ["service"], []]
    dimensions = (document["service"], document["task"], document["backend"])
    assert dimensions == ("lambda-test", "lambda_test.maybe_fail", backend)
    units = {metric["Name"]: metric["Unit"] for metric in directive["Metrics"]}
    assert units == {
        "tasks_queued": "Count",
        "tasks_started": "Count",
        "tasks_succeeded": "Count",
        "tasks_failed": "Count",
        "task_duration": "Milliseconds",
    }
    counts = {name: document[name] for name in units if name != "task_duration"}
    assert counts == {"tasks_queued": 2, "tasks_started": 2, "tasks_succeeded": 1, "tasks_failed": 1}
    ended = [line for line in lines_after_first if line.get("event") in ("task.failed", "task.succeeded")]
    durations = {line["duration_ms"] for line in ended}
    assert set(document["task_duration"]) == durations
    assert set(units) <= set(names.cloudwatch_metrics())

    assert sorted(by_task) == ["lambda_test.fail", "lambda_test.record"]
    for line in by_task.values():
        assert_valid_emf(line)
    assert (by_task["lambda_test.fail"]["tasks_failed"], by_task["lambda_test.record"]["tasks_succeeded"]) == (1, 1)
    assert "tasks_failed" not in by_task["lambda_test.record"]


def test_emf_keeps_at_most_100_values_per_document() -> None:
    stream = io.StringIO()
    recorder = EmfRecorder(NAMESPACE, stream)
    labels = ("svc", "t", "inline")
    for index in range(150):
        recorder.duration(labels, float(index))
    recorder.flush()
    documents = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [len(d["task_duration"]) for d in documents] == [100, 50]
    for document in documents:
        assert_valid_emf(document)


@pytest.mark.parametrize("level", ["INFO", "ERROR"])
def test_every_task_event_is_counted_whatever_the_log_level(monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    """Metrics come from the events, not from the log lines: LOG_LEVEL filters the lines only.

    ``task.started`` is DEBUG (the runner logs it so): never written at INFO, still counted.
    """
    from shared.background.runner import log as execution_log
    from shared.logs import configure_logging

    monkeypatch.setenv("METRICS", "emf")
    monkeypatch.setenv("LOG_LEVEL", level)
    from shared.settings import get_settings

    get_settings.cache_clear()
    written = io.StringIO()
    configure_logging("tests", stream=written, cache_loggers=False)
    stream = io.StringIO()
    recorder = metrics.recorder()
    assert isinstance(recorder, EmfRecorder)
    recorder._stream = stream
    fields = {"task": "t", "task_id": "1", "backend": "sqs"}
    execution_log.debug("task.started", **fields, attempt=3)
    execution_log.debug("other.debug_line", **fields)
    execution_log.info("task.succeeded", **fields, attempt=3, duration_ms=2.5)
    execution_log.error("task.timed_out", **fields, attempt=1, started=False)
    execution_log.error("task.enqueue_failed", backend="sqs", task_ids=["a", "b"], tasks=["t", "t"])
    execution_log.info("worker.started")
    metrics.flush()
    [document] = [json.loads(line) for line in stream.getvalue().splitlines()]
    counts = {name: document.get(name) for name in names.cloudwatch_metrics() if name in document}
    assert counts == {
        "tasks_started": 1,
        "tasks_retried": 1,
        "tasks_succeeded": 1,
        "tasks_timed_out": 1,
        "tasks_enqueue_failed": 2,
        "task_duration": [2.5],
    }
    assert "task.started" not in written.getvalue() and "other.debug_line" not in written.getvalue()
    configure_logging("tests", cache_loggers=False)


# --- containers: Prometheus ------------------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_after_n_requests_under_a_real_uvicorn_process(tmp_path: Path) -> None:
    requests = 7
    server = start_function("all", {"NOTIFICATION_LOG_PATH": str(tmp_path / "log"), "LOG_FORMAT": "json"})
    try:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            before = client.get("/metrics")
            assert before.status_code == 200
            assert before.headers["content-type"].startswith("text/plain; version=")
            assert "# TYPE tasks_succeeded_total counter" in before.text, "the task metrics exist before any task"
            for index in range(requests):
                response = client.post(f"/notifications/send-notification/user{index}@example.com")
                assert response.status_code == 200
            labels = (("backend", "inline"), ("service", "notifications"), ("task", "notifications.write_notification"))
            for _ in range(200):  # the tasks run after their responses: wait for the last one to be counted
                samples = _samples(client.get("/metrics").text)
                if samples.get(("tasks_succeeded_total", labels)) == requests:
                    break
            else:
                pytest.fail(f"tasks_succeeded_total never reached {requests}: {samples}")
    finally:
        server.close()
    assert samples[("tasks_queued_total", labels)] == requests
    assert samples[("tasks_started_total", labels)] == requests
    assert samples.get(("tasks_failed_total", labels), 0) == 0
    assert samples[("task_duration_seconds_count", labels)] == requests
    assert samples[("tasks_in_flight", labels)] == 0
    families = {family.name for family in text_string_to_metric_families(before.text)}
    expected = {names.prometheus_name(name) for name in [*names.COUNTERS.values(), names.RETRIED, names.DURATION]}
    assert expected <= families
    assert names.IN_FLIGHT in families


def test_prometheus_counts_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorder off Lambda is prometheus-client's, in the default registry."""
    monkeypatch.setenv("METRICS", "prometheus")
    from shared.settings import get_settings

    get_settings.cache_clear()
    labels = {"service": "probe", "task": "probe.task", "backend": "inline"}

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = value("tasks_failed_total"), value("task_duration_seconds_count")
    metrics.record("task.started", {"service": "probe", "task": "probe.task", "backend": "inline", "attempt": 1})
    assert value("tasks_in_flight") == 1
    metrics.record("task.failed", {"service": "probe", "task": "probe.task", "backend": "inline", "duration_ms": 1500})
    assert (value("tasks_failed_total"), value("task_duration_seconds_count")) == (before[0] + 1, before[1] + 1)
    assert value("tasks_in_flight") == 0
    assert REGISTRY.get_sample_value("task_duration_seconds_bucket", {**labels, "le": "1.0"}) == 0
    assert REGISTRY.get_sample_value("task_duration_seconds_bucket", {**labels, "le": "2.5"}) == 1


def test_lambda_never_imports_prometheus_client(tmp_path: Path) -> None:
    """On Lambda the recorder is EMF; prometheus-client is neither imported nor in the Lambda layer."""
    import subprocess
    import sys

    from infra.sam_build import NOT_ON_LAMBDA, layer_distributions

    probe = (
        "import sys\n"
        "from functions.notifications.app import app\n"
        "from shared import metrics\n"
        "metrics.record('task.started', {'task': 't', 'backend': 'lambda-extension', 'attempt': 1})\n"
        "metrics.flush()\n"
        "print('prometheus_client' in sys.modules, type(metrics.recorder()).__name__)\n"
    )
    env = {
        **{key: value for key, value in os.environ.items() if key != "METRICS"},
        "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9",  # nothing listens: the extension falls back, loudly
        "NOTIFICATION_LOG_PATH": str(tmp_path / "log"),
    }
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    lines = result.stdout.strip().splitlines()
    # The lifespan's shutdown lines come after it, at exit.
    verdict = next(line for line in lines if not line.startswith("{"))
    assert verdict == "False EmfRecorder"
    assert any(json.loads(line).get("event") == "task.metrics" for line in lines if line.startswith("{"))
    assert "prometheus-client" in NOT_ON_LAMBDA
    assert "prometheus-client" not in layer_distributions("Dependencies")


def test_prometheus_on_lambda_is_refused_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from shared.settings import Settings

    monkeypatch.setenv("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
    monkeypatch.setenv("METRICS", "prometheus")
    with pytest.raises(ValidationError, match="METRICS=prometheus cannot work on Lambda"):
        Settings()
    monkeypatch.setenv("METRICS", "emf")
    assert Settings().metrics == "emf"


def test_several_uvicorn_workers_sum_their_counts_with_prometheus_multiproc_dir(tmp_path: Path) -> None:
    """Not what shared.serve runs (one process per container), but safe when someone runs --workers N."""
    import sys

    from infra.servers import ServerProcess, free_port, wait_until_healthy

    requests = 40
    values = tmp_path / "prometheus"
    values.mkdir()
    port = free_port()
    server = ServerProcess(
        [sys.executable, "-m", "uvicorn", "shared.gateway:create_gateway", "--factory", "--workers", "2",
         "--host", "127.0.0.1", "--port", str(port)],
        {"PROMETHEUS_MULTIPROC_DIR": str(values), "NOTIFICATION_LOG_PATH": str(tmp_path / "log"), "LOG_FORMAT": "json"},
        port,
    )  # fmt: skip
    labels = (("backend", "inline"), ("service", "notifications"), ("task", "notifications.write_notification"))
    try:
        wait_until_healthy(f"{server.base_url}/health", server.process)
        for index in range(requests):  # a new connection each: the kernel spreads them over the workers
            response = httpx.post(f"{server.base_url}/notifications/send-notification/u{index}@example.com")
            assert response.status_code == 200
        for _ in range(200):
            samples = _samples(httpx.get(f"{server.base_url}/metrics").text)
            if samples.get(("tasks_succeeded_total", labels)) == requests:
                break
        else:
            pytest.fail(f"tasks_succeeded_total never reached {requests}: {samples}")
        writers = {path.stem.rsplit("_", 1)[-1] for path in values.glob("counter_*.db")}
    finally:
        server.close()
    assert len(writers) == 2, f"both workers counted (value files by pid: {writers})"
    assert samples[("tasks_queued_total", labels)] == requests
    assert samples[("task_duration_seconds_count", labels)] == requests


def test_several_uvicorn_workers_without_a_shared_directory_are_warned(tmp_path: Path) -> None:
    """Each process would report only its own counts: every worker says so, with the fix, as it starts."""
    import sys

    from infra.servers import ServerProcess, free_port, parse_json_lines, wait_until_healthy

    port = free_port()
    server = ServerProcess(
        [sys.executable, "-m", "uvicorn", "shared.gateway:create_gateway", "--factory", "--workers", "2",
         "--host", "127.0.0.1", "--port", str(port)],
        {"NOTIFICATION_LOG_PATH": str(tmp_path / "log"), "LOG_FORMAT": "json"},
        port,
    )  # fmt: skip
    try:
        wait_until_healthy(f"{server.base_url}/health", server.process)
        for _ in range(300):
            warnings = [e for e in parse_json_lines(server.output()) if e.get("event") == "metrics.not_shared"]
            if len(warnings) == 2:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"expected one warning per worker:\n{server.output()}")
    finally:
        server.close()
    assert {w["level"] for w in warnings} == {"warning"}
    assert "PROMETHEUS_MULTIPROC_DIR" in warnings[0]["fix"]


def test_one_process_is_not_warned(tmp_path: Path) -> None:
    from infra.servers import parse_json_lines

    server = start_function("all", {"NOTIFICATION_LOG_PATH": str(tmp_path / "log"), "LOG_FORMAT": "json"})
    try:
        assert httpx.get(f"{server.base_url}/metrics").status_code == 200
        events = [e.get("event") for e in parse_json_lines(server.output())]
    finally:
        server.close()
    assert events, "the server's own lines were read"
    assert "metrics.not_shared" not in events
