"""One trace id from request to worker: Lambda's X-Ray trace or the caller's traceparent, through SQS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from functions.notifications.app import app as notifications_app
from infra.lambda_events import http_api_event
from infra.runtime_api import lambda_environment
from shared import tracing
from shared.worker import Worker
from tests.support.logs import LogCapture
from tests.support.moto_sqs import keep_batch_system_attributes
from tests.support.sqs_queues import (
    FakeLambdaContext,
    durable_aws,
    durable_aws_server,
    executor_from_settings,
    subprocess_env,
)

EMAIL = "jane.doe@example.com"
DURABLE = "notifications.write_notification"
ROOT = "1-5759e988-bd862e3fe1be46a994272793"
XRAY_HEADER = f"Root={ROOT};Parent=53995c3f42cd8ad8;Sampled=1"
W3C_TRACE_ID = "5759e988bd862e3fe1be46a994272793"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_trace_headers_parse_and_convert() -> None:
    xray = tracing.parse_xray(XRAY_HEADER)
    assert xray is not None
    assert (xray.trace_id, xray.span_id, xray.sampled) == (W3C_TRACE_ID, "53995c3f42cd8ad8", True)
    assert xray.aws_trace_header == XRAY_HEADER, "passed on unchanged"
    assert xray.traceparent == f"00-{W3C_TRACE_ID}-53995c3f42cd8ad8-01"
    w3c = tracing.parse_traceparent(TRACEPARENT)
    assert w3c is not None
    assert w3c.aws_trace_header == "Root=1-0af76519-16cd43dd8448eb211c80319c;Parent=b7ad6b7169203331;Sampled=1"
    for invalid in (
        "",
        "00-" + "0" * 32 + "-b7ad6b7169203331-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "nonsense",
    ):
        assert tracing.parse_traceparent(invalid) is None, invalid
    assert tracing.parse_xray("Root=not-a-root") is None


@pytest.fixture
def notifications(monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    keep_batch_system_attributes(monkeypatch)
    with (
        durable_aws(monkeypatch, DURABLE_TASKS=DURABLE) as durable,
        executor_from_settings(notifications_app),
        TestClient(notifications_app) as client,
    ):
        client.durable = durable  # type: ignore[attr-defined]
        yield client


def test_container_traceparent_reaches_the_worker_through_sqs(notifications: TestClient, logs: LogCapture) -> None:
    response = notifications.post(f"/send-notification/{EMAIL}", headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200
    durable = notifications.durable  # type: ignore[attr-defined]
    [message] = durable.receive()
    trace_id = TRACEPARENT.split("-")[1]
    assert json.loads(message["Body"])["traceparent"] == TRACEPARENT
    assert (
        message["Attributes"]["AWSTraceHeader"]
        == "Root=1-0af76519-16cd43dd8448eb211c80319c;Parent=b7ad6b7169203331;Sampled=1"
    )

    worker = Worker(service="worker")
    try:
        assert worker.handle(durable.event([message]), FakeLambdaContext()) == {"batchItemFailures": []}
    finally:
        worker.close()
    api = [e for e in logs.events if e.get("service") == "notifications"]
    assert {"request.completed", "task.queued", "task.enqueued"} <= {e["event"] for e in api}
    worker_lines = [e for e in logs.events if e.get("service") == "worker"]
    assert "task.succeeded" in {e["event"] for e in worker_lines}
    assert {e.get("trace_id") for e in api + worker_lines} == {trace_id}


def test_in_process_tasks_log_the_request_trace_or_a_new_one(logs: LogCapture, notification_log: Path) -> None:
    with TestClient(notifications_app) as client:
        client.post(f"/send-notification/{EMAIL}", headers={"traceparent": TRACEPARENT})
        client.post(f"/send-notification/{EMAIL}", headers={"traceparent": "garbage"})
    first, second = (
        [e for e in logs.events if e.get("request_id") == request_id]
        for request_id in dict.fromkeys(e["request_id"] for e in logs.events if "request_id" in e)
    )
    assert {e["event"] for e in first} >= {"task.queued", "task.succeeded", "request.completed"}
    assert {e["trace_id"] for e in first} == {TRACEPARENT.split("-")[1]}
    [new_id] = {e["trace_id"] for e in second}
    assert len(new_id) == 32 and new_id != TRACEPARENT.split("-")[1]


def _lines(lines: list[dict[str, Any]], *events: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("event") in events]


def test_lambda_xray_trace_goes_to_sqs_as_aws_trace_header_and_to_the_worker_lines(
    monkeypatch: pytest.MonkeyPatch, notification_log: Path
) -> None:
    keep_batch_system_attributes(monkeypatch)
    with durable_aws_server(monkeypatch, DURABLE_TASKS=DURABLE) as durable:
        env = subprocess_env(durable)
        with lambda_environment("functions.notifications.app.handler", env=env) as api:
            api.invoke(http_api_event(f"/send-notification/{EMAIL}"), trace_id=XRAY_HEADER).wait_free()
            api_lines = api.logs()
        [message] = durable.receive()
        assert message["Attributes"]["AWSTraceHeader"] == XRAY_HEADER
        worker_env = {**env, "TASK_BACKEND": "inline"}
        with lambda_environment("functions.worker.sqs.handler", env=worker_env) as worker:
            # The worker's own invocation has another trace (X-Ray links it): its lines keep the message's.
            result = worker.invoke(durable.event([message]), trace_id=f"Root=1-{'a' * 8}-{'b' * 24};Sampled=1")
            result.wait_free()
            worker_lines = worker.logs()
    assert result.result == {"batchItemFailures": []}
    sent = _lines(api_lines, "request.completed", "task.queued", "task.enqueued")
    ran = _lines(worker_lines, "task.succeeded")
    assert len(sent) == 3 and len(ran) == 1
    assert {line["trace_id"] for line in sent + ran} == {W3C_TRACE_ID}
    assert {line["xray_trace_id"] for line in sent} == {ROOT}
    # Both sides count the durable task once, in one EMF line per invocation.
    [api_metrics] = _lines(api_lines, "task.metrics")
    assert (api_metrics["service"], api_metrics["backend"]) == ("notifications", "sqs")
    assert (api_metrics["tasks_queued"], api_metrics["tasks_enqueued"]) == (1, 1)
    [worker_metrics] = _lines(worker_lines, "task.metrics")
    assert (worker_metrics["service"], worker_metrics["task"], worker_metrics["backend"]) == ("worker", DURABLE, "sqs")
    assert (worker_metrics["tasks_started"], worker_metrics["tasks_succeeded"]) == (1, 1)


# --- OpenTelemetry: a span per task run, only with an SDK configured ---------------------------


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An SDK tracer provider with an in-memory exporter, as the process's provider for one test."""
    from opentelemetry import trace as api
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(api, "_TRACER_PROVIDER", provider)
    yield exporter
    provider.shutdown()


def _task_spans(exporter: Any) -> list[Any]:
    return [span for span in exporter.get_finished_spans() if span.name.startswith("task ")]


def test_no_sdk_no_span() -> None:
    assert tracing._sdk_tracer() is None


def _request_span(exporter: Any) -> Any:
    [span] = [span for span in exporter.get_finished_spans() if span.name.startswith("POST ")]
    return span


def test_each_task_gets_its_own_ended_span_linked_to_the_request(spans: Any, notification_log: Path) -> None:
    """FastAPI's request span continues the caller's traceparent; each task's span is its child, and linked."""
    from opentelemetry.trace import StatusCode

    from tests.support.lambda_app import app as test_app

    with TestClient(test_app) as client:
        assert client.post("/one-fails/otel", headers={"traceparent": TRACEPARENT}).status_code == 200
    request = _request_span(spans)
    assert request.context.trace_id == int(TRACEPARENT.split("-")[1], 16)
    failed, succeeded = _task_spans(spans)  # finished: each ended with its task
    for span in (failed, succeeded):
        assert span.name == "task lambda_test.maybe_fail"
        assert span.context.trace_id == request.context.trace_id
        assert span.parent.span_id == request.context.span_id
        [link] = span.links
        assert (link.context.trace_id, link.context.span_id) == (request.context.trace_id, request.context.span_id)
        assert span.end_time is not None and span.end_time >= request.end_time, "the task ends after the response"
        assert span.attributes["task.backend"] == "inline"
    assert failed.status.status_code is StatusCode.ERROR
    assert [event.name for event in failed.events] == ["exception"]
    assert succeeded.status.status_code is StatusCode.UNSET
    assert failed.context.span_id != succeeded.context.span_id


def test_the_link_survives_the_sqs_hop(spans: Any, notifications: TestClient) -> None:
    notifications.post(f"/send-notification/{EMAIL}", headers={"traceparent": TRACEPARENT})
    assert not _task_spans(spans), "a durable task's span starts on the worker"
    request = _request_span(spans)
    durable = notifications.durable  # type: ignore[attr-defined]
    [message] = durable.receive()
    assert (
        json.loads(message["Body"])["traceparent"]
        == f"00-{TRACEPARENT.split('-')[1]}-{request.context.span_id:016x}-01"
    )
    worker = Worker(service="worker")
    try:
        worker.handle(durable.event([message]), FakeLambdaContext())
    finally:
        worker.close()
    [span] = _task_spans(spans)
    assert span.attributes["task.backend"] == "sqs"
    assert (span.context.trace_id, span.parent.span_id) == (request.context.trace_id, request.context.span_id)
    [link] = span.links
    assert (link.context.trace_id, link.context.span_id) == (request.context.trace_id, request.context.span_id)


def test_with_an_sdk_the_logs_trace_id_is_the_spans_trace_id(
    spans: Any, logs: LogCapture, notification_log: Path
) -> None:
    """No traceparent from the caller: the request's new trace is the one FastAPI's span continues."""
    with TestClient(notifications_app) as client:
        assert client.post(f"/send-notification/{EMAIL}").status_code == 200
    request = _request_span(spans)
    [task] = _task_spans(spans)
    assert task.context.trace_id == request.context.trace_id
    lines = [e for e in logs.events if e.get("service") == "notifications"]
    assert {"request.completed", "task.queued", "task.succeeded"} <= {e["event"] for e in lines}
    assert {e["trace_id"] for e in lines} == {f"{request.context.trace_id:032x}"}
