"""The durable-task queue, DLQ and idempotency table in moto, and SQS events built from them."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from moto import mock_aws
from moto.server import ThreadedMotoServer

from infra.durable_resources import TaskQueues, create_idempotency_table, create_task_queues
from infra.servers import free_port
from shared import aws
from shared.background import build_executor, status_store
from shared.settings import get_settings
from shared.worker.poller import lambda_record

TABLE = "tests-idempotency"


@dataclass
class FakeLambdaContext:
    """The part of a Lambda context the worker reads."""

    remaining_ms: int = 60_000
    function_name: str = "worker"
    aws_request_id: str = "lambda-request-1"
    extra: dict[str, Any] = field(default_factory=dict)

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@dataclass
class DurableAws:
    queues: TaskQueues
    table: str
    endpoint_url: str | None = None

    def receive(self, max_messages: int = 10, url: str | None = None) -> list[dict[str, Any]]:
        response = aws.sqs().receive_message(
            QueueUrl=url or self.queues.url,
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=0,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return list(response.get("Messages", []))

    def receive_all(self, url: str | None = None) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        while batch := self.receive(url=url):
            messages.extend(batch)
        return messages

    def bodies(self, url: str | None = None) -> list[dict[str, Any]]:
        return [json.loads(message["Body"]) for message in self.receive_all(url)]

    def event(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The SQS event Lambda would invoke the worker with."""
        return {"Records": [lambda_record(m, self.queues.arn, "us-east-1") for m in messages]}  # type: ignore[arg-type]

    def depth(self, url: str | None = None) -> dict[str, int]:
        attributes = aws.sqs().get_queue_attributes(QueueUrl=url or self.queues.url, AttributeNames=["All"])
        return {
            "visible": int(attributes["Attributes"]["ApproximateNumberOfMessages"]),
            "in_flight": int(attributes["Attributes"]["ApproximateNumberOfMessagesNotVisible"]),
        }

    def idempotency_items(self) -> list[dict[str, Any]]:
        return list(aws.dynamodb().Table(self.table).scan()["Items"])


def _configure(monkeypatch: pytest.MonkeyPatch, queues: TaskQueues, env: dict[str, str]) -> None:
    monkeypatch.setenv("TASK_QUEUE_URL", queues.url)
    monkeypatch.setenv("IDEMPOTENCY_TABLE", TABLE)
    monkeypatch.setenv("TASK_ENQUEUE_BACKOFF_SECONDS", "0")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


@contextmanager
def durable_aws(
    monkeypatch: pytest.MonkeyPatch, *, max_receives: int = 3, visibility_timeout: int = 30, **env: str
) -> Iterator[DurableAws]:
    """moto's in-process SQS and DynamoDB with the queue, DLQ and table; settings point at them."""
    with mock_aws():
        aws.reset_clients()
        try:
            queues = create_task_queues("tests-tasks", max_receives=max_receives, visibility_timeout=visibility_timeout)
            create_idempotency_table(TABLE)
            _configure(monkeypatch, queues, {"TASK_MAX_RECEIVES": str(max_receives), **env})
            yield DurableAws(queues, TABLE)
        finally:
            status_store.drain()
            aws.reset_clients()


@contextmanager
def durable_aws_server(monkeypatch: pytest.MonkeyPatch, *, max_receives: int = 3, **env: str) -> Iterator[DurableAws]:
    """The same resources behind moto's HTTP server on 127.0.0.1, for worker subprocesses."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # moto's state lives in this process and outlives a server: start from nothing.
    httpx.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        get_settings.cache_clear()
        aws.reset_clients()
        queues = create_task_queues("tests-tasks", max_receives=max_receives, visibility_timeout=30)
        create_idempotency_table(TABLE)
        _configure(monkeypatch, queues, {"TASK_MAX_RECEIVES": str(max_receives), **env})
        yield DurableAws(queues, TABLE, endpoint_url=endpoint)
    finally:
        status_store.drain()
        aws.reset_clients()
        server.stop()


@contextmanager
def executor_from_settings(app: FastAPI) -> Iterator[None]:
    """Route ``app``'s tasks as the current settings say, as a fresh process would.

    Import the app at the top of the test module (clean environment), never inside the
    test: its import-time executor would keep this test's routing for the whole session.
    """
    original = app.state.task_executor
    app.state.task_executor = build_executor()
    try:
        yield
    finally:
        app.state.task_executor = original


def subprocess_env(durable: DurableAws, **extra: str) -> dict[str, str]:
    """What a worker subprocess needs to reach the moto server and the test's files."""
    names = ("TASK_QUEUE_URL", "IDEMPOTENCY_TABLE", "TASK_MAX_RECEIVES", "NOTIFICATION_LOG_PATH")
    env = {name: os.environ[name] for name in names if name in os.environ}
    assert durable.endpoint_url is not None
    return {**env, "AWS_ENDPOINT_URL": durable.endpoint_url, "LOG_FORMAT": "json", **extra}
