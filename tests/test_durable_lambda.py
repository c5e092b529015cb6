"""Both sides on (emulated) Lambda: the real runtime client, the function's own handler, moto's server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.lambda_events import http_api_event
from infra.runtime_api import lambda_environment
from tests.support import sqs_tasks
from tests.support.sqs_queues import DurableAws, durable_aws_server, subprocess_env

EMAIL = "jane.doe@example.com"


@pytest.fixture
def durable(monkeypatch: pytest.MonkeyPatch) -> Iterator[DurableAws]:
    with durable_aws_server(monkeypatch, DURABLE_TASKS="notifications.write_notification") as resources:
        yield resources


@pytest.mark.tasks_may_be_lost(
    "by design: the poison message is reported as a batch item failure and stays in SQS for its redelivery, "
    "which the test does not wait for"
)
def test_api_function_sends_before_the_freeze_and_worker_function_reports_only_its_failure(
    durable: DurableAws, notification_log: Path, tmp_path: Path
) -> None:
    env = subprocess_env(durable)
    with lambda_environment("functions.notifications.app.handler", env=env) as api:
        invocation = api.invoke(http_api_event(f"/send-notification/{EMAIL}", request_id="apigw-durable-1"))
        invocation.wait_free()
        api_logs = api.logs()
    events = [line.get("event") for line in api_logs]
    assert "lambda_extension.registered" in events, "the send is handed to the post-response runner"
    assert "lambda_extension.unavailable" not in events
    assert invocation.result["statusCode"] == 200
    assert json.loads(invocation.result["body"]) == {"message": "Notification sent in the background"}
    [message] = durable.receive()
    assert json.loads(message["Body"])["request_id"] == "apigw-durable-1"
    [enqueued] = [line for line in api_logs if line.get("event") == "task.enqueued"]
    assert enqueued["message_id"] == message["MessageId"]

    poison = tmp_path / "poison.txt"
    from shared import aws

    aws.sqs().send_message(
        QueueUrl=durable.queues.url,
        MessageBody=json.dumps(
            {
                "task": "tests.durable.explode",
                "task_id": "poison-1",
                "args": [str(poison), "p"],
                "kwargs": {},
                "enqueued_at": "2024-01-01T00:00:00Z",
            }
        ),
    )
    [poison_message] = durable.receive()
    event = durable.event([message, poison_message])
    worker_env = {**env, "TASK_BACKEND": "inline", "TASK_MODULES": "shared.tasks,tests.support.sqs_tasks"}
    with lambda_environment("functions.worker.sqs.handler", env=worker_env) as worker:
        result = worker.invoke(event).wait_free()
        worker_logs = worker.logs()

    assert result.status == "success"
    assert result.result == {"batchItemFailures": [{"itemIdentifier": poison_message["MessageId"]}]}
    assert notification_log.read_text() == f"notification for {EMAIL}: some notification\n"
    assert sqs_tasks.lines(poison) == ["exploding p"]
    [succeeded] = [line for line in worker_logs if line.get("event") == "task.succeeded"]
    assert succeeded["task_id"] == enqueued["task_id"]
    assert succeeded["request_id"] == "apigw-durable-1"
    assert succeeded["backend"] == "sqs"
    assert succeeded["service"] == "worker"
    task_lines = [  # task.metrics, the invocation's EMF document, sums every request: it has no request keys
        line
        for line in worker_logs
        if str(line.get("event", "")).startswith("task.") and line["event"] != "task.metrics"
    ]
    assert sorted(line["event"] for line in task_lines) == ["task.failed", "task.succeeded"]  # a line per run at INFO
    for line in task_lines:  # the keys every HTTP function's line has on Lambda
        assert line["function_request_id"] == result.request_id
        assert line["function_name"] == "fastapi-tasks-test"
        assert line["cold_start"] is True
        assert line["function_arn"].endswith(":function:fastapi-tasks-test")
    assert {line["request_id"] for line in task_lines if line["task_id"] == enqueued["task_id"]} == {"apigw-durable-1"}


@pytest.mark.tasks_may_be_lost(
    "by design: the environment ends (exit 3) with the message in SQS, which delivers it again"
)
def test_a_sync_task_still_running_at_the_invocation_deadline_ends_the_environment(
    durable: DurableAws, tmp_path: Path
) -> None:
    """Returning would leave its thread running into the next invocations (and beside its own retry):
    the worker process exits instead, and Lambda starts a fresh environment."""
    out = tmp_path / "stuck.txt"
    from shared import aws

    aws.sqs().send_message(
        QueueUrl=durable.queues.url,
        MessageBody=json.dumps(
            {
                "task": "tests.durable.side_effect_after",
                "task_id": "stuck-1",
                "args": [str(out), "s", 30.0],
                "kwargs": {},
                "enqueued_at": "2024-01-01T00:00:00Z",
            }
        ),
    )
    event = durable.event(durable.receive())
    env = {**subprocess_env(durable), "TASK_BACKEND": "inline", "TASK_MODULES": "tests.support.sqs_tasks"}
    with lambda_environment("functions.worker.sqs.handler", env=env, timeout_s=3) as worker:
        worker.submit(event)
        returncode = worker.process.wait(timeout=20)
        logs = worker.logs()

    assert returncode == 3
    assert sqs_tasks.lines(out) == ["started s"], "the side effect never happened"
    [timed_out] = [line for line in logs if line.get("event") == "task.timed_out"]
    assert timed_out["still_running"] is True
    assert timed_out["task_id"] == "stuck-1"
    [exiting] = [line for line in logs if line.get("event") == "worker.exiting"]
    assert exiting["exit_code"] == 3
