"""The worker side: SQS event -> task, partial batch failures, idempotency, dead-lettering."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from functions.notifications.app import app as notifications_app
from functions.worker.app import app as worker_app
from functions.worker.app import handler
from infra.servers import ROOT
from shared.background.errors import TaskStuck
from shared.background.sqs import SqsBackend
from shared.background.task import QueuedTask
from shared.worker import Worker, make_sqs_handler
from tests.support import sqs_tasks
from tests.support.logs import LogCapture
from tests.support.sqs_queues import DurableAws, FakeLambdaContext, durable_aws, executor_from_settings

EMAIL = "jane.doe@example.com"


def test_the_lambda_entry_imports_no_fastapi() -> None:
    """Lambda imports ``functions.worker.sqs`` (template.yaml): SQS events need no web framework."""
    probe = (
        "import sys, functions.worker.sqs\n"
        "print(sorted({name.partition('.')[0] for name in sys.modules} & {'fastapi', 'mangum'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.fixture
def durable(monkeypatch: pytest.MonkeyPatch) -> Iterator[DurableAws]:
    with durable_aws(monkeypatch, max_receives=3, DURABLE_TASKS="notifications.write_notification") as resources:
        yield resources


@pytest.fixture
def worker(durable: DurableAws) -> Iterator[Worker]:
    built = Worker()
    yield built
    built.close()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "side-effects.txt"


def enqueue(*tasks: tuple[str, tuple[Any, ...]]) -> list[QueuedTask]:
    """Send tasks the way the API side does; returns them (with their task ids)."""
    queued = [QueuedTask(getattr(sqs_tasks, name), args, {}, f"tests.durable.{name}") for name, args in tasks]
    asyncio.run(SqsBackend.from_settings().dispatch(queued))
    return queued


def failed_ids(response: dict[str, Any]) -> list[str]:
    return [failure["itemIdentifier"] for failure in response["batchItemFailures"]]


def test_request_then_queue_then_worker_then_side_effect_with_one_trail_of_ids(
    durable: DurableAws, logs: LogCapture, notification_log: Path
) -> None:
    with executor_from_settings(notifications_app), TestClient(notifications_app) as client:
        response = client.post(f"/send-notification/{EMAIL}", headers={"X-Request-ID": "req-e2e"})
    assert response.status_code == 200
    assert not notification_log.exists()

    messages = durable.receive()
    result = handler(durable.event(messages), FakeLambdaContext())

    assert result == {"batchItemFailures": []}
    assert notification_log.read_text() == f"notification for {EMAIL}: some notification\n"
    [queued] = logs.named("task.queued")
    [succeeded] = logs.named("task.succeeded")
    for event in (queued, succeeded):
        assert event["task"] == "notifications.write_notification"
        assert event["task_id"] == queued["task_id"]
        assert event["request_id"] == "req-e2e"
        assert event["backend"] == "sqs"
        assert event["attempt"] == 1
    assert queued["service"] == "notifications"
    assert succeeded["service"] == "worker"
    assert succeeded["queued_by"] == "notifications"
    assert succeeded["wait_ms"] >= 0 and succeeded["started_at"] <= succeeded["timestamp"]
    [item] = durable.idempotency_items()
    assert item["status"] == "COMPLETED"
    assert item["id"].startswith("task#")
    assert int(item["expiration"]) > 0


def test_one_failing_message_is_the_only_one_reported_for_redelivery(
    durable: DurableAws, worker: Worker, out: Path, logs: LogCapture
) -> None:
    enqueue(("record", (str(out), "first")), ("explode", (str(out), "second")), ("record", (str(out), "third")))
    messages = durable.receive()
    by_label = {json.loads(m["Body"])["args"][1]: m["MessageId"] for m in messages}

    response = worker.handle(durable.event(messages), FakeLambdaContext())

    assert failed_ids(response) == [by_label["second"]]
    assert sorted(sqs_tasks.lines(out)) == ["exploding second", "first", "third"]
    [failure] = logs.named("task.failed")
    assert failure["task"] == "tests.durable.explode"
    assert failure["error_type"] == "RuntimeError"
    assert failure["backend"] == "sqs"
    assert len(logs.named("task.succeeded")) == 2
    assert logs.named("task.dead_lettered") == [], "attempt 1 of 3 is not the last"


def test_the_same_message_delivered_twice_runs_once(
    durable: DurableAws, worker: Worker, out: Path, logs: LogCapture
) -> None:
    [task] = enqueue(("record", (str(out), "once")))
    [message] = durable.receive()
    event = durable.event([message])

    first = worker.handle(event, FakeLambdaContext())
    event["Records"][0]["attributes"]["ApproximateReceiveCount"] = "2"
    second = worker.handle(event, FakeLambdaContext())

    assert first == second == {"batchItemFailures": []}
    assert sqs_tasks.lines(out) == ["once"]
    assert len(logs.named("task.succeeded")) == 1, "ran once"
    [duplicate] = logs.named("task.duplicate")
    assert duplicate["task_id"] == task.task_id
    assert duplicate["attempt"] == 2
    assert duplicate["completed"] == {"task": "tests.durable.record", "attempt": 1}


def test_a_task_running_in_another_worker_is_not_started_again(
    durable: DurableAws, worker: Worker, out: Path, logs: LogCapture
) -> None:
    enqueue(("record", (str(out), "warm-up")))
    worker.handle(durable.event(durable.receive()), FakeLambdaContext())
    [task] = enqueue(("record", (str(out), "busy")))
    [message] = durable.receive()
    # What another worker's call leaves while it runs the task: an INPROGRESS record.
    worker.persistence_store.save_inprogress(data={"task_id": task.task_id}, remaining_time_in_millis=60_000)

    response = worker.handle(durable.event([message]), FakeLambdaContext())

    assert failed_ids(response) == [message["MessageId"]]
    assert sqs_tasks.lines(out) == ["warm-up"]
    [busy] = logs.named("task.in_progress_elsewhere")
    assert busy["task_id"] == task.task_id


def test_a_failed_task_is_retried_and_a_poison_message_lands_in_the_dlq_after_max_receives(
    monkeypatch: pytest.MonkeyPatch, out: Path, logs: LogCapture
) -> None:
    # Visibility timeout 0: a failed message is visible again at once, as if its timeout had passed.
    with durable_aws(monkeypatch, max_receives=3, visibility_timeout=0) as resources:
        worker = Worker()
        [task] = enqueue(("explode", (str(out), "poison")))
        receives = 0
        while messages := resources.receive():
            receives += 1
            response = worker.handle(resources.event(messages), FakeLambdaContext())
            assert failed_ids(response) == [messages[0]["MessageId"]]
        worker.close()
        [dead] = resources.receive_all(resources.queues.dlq_url)
        depth = resources.depth()
        items = resources.idempotency_items()

    assert receives == 3
    assert json.loads(dead["Body"])["task_id"] == task.task_id
    assert depth == {"visible": 0, "in_flight": 0}
    assert sqs_tasks.lines(out) == ["exploding poison"] * 3, "a failed run is forgotten, so the retry runs"
    assert [event["attempt"] for event in logs.named("task.failed", task_id=task.task_id)] == [1, 2, 3]
    [dead_lettered] = logs.named("task.dead_lettered")
    assert dead_lettered["task_id"] == task.task_id
    assert dead_lettered["attempt"] == 3
    assert dead_lettered["max_receives"] == 3
    assert items == []


def test_a_permanent_failure_is_recorded_and_deleted_never_retried_nor_dead_lettered(
    durable: DurableAws, worker: Worker, out: Path, logs: LogCapture
) -> None:
    [task] = enqueue(("refuse", (str(out), "bad")))
    messages = durable.receive()
    last_receive = FakeLambdaContext()
    messages[0]["Attributes"]["ApproximateReceiveCount"] = "3"  # the last allowed receive: still no DLQ

    response = worker.handle(durable.event(messages), last_receive)
    worker.handle(durable.event(messages), last_receive)  # delivered again all the same

    assert response == {"batchItemFailures": []}, "done with: the message is deleted"
    assert sqs_tasks.lines(out) == ["refused bad"], "run once, not retried"
    [failed] = logs.named("task.failed", task_id=task.task_id)
    assert failed["permanent"] is True
    assert failed["error"] == "bad input bad"
    assert logs.named("task.dead_lettered") == []
    assert len(logs.named("task.duplicate", task_id=task.task_id)) == 1
    [item] = durable.idempotency_items()
    assert item["status"] == "COMPLETED"


def test_an_ordinary_failure_is_not_marked_permanent(
    durable: DurableAws, worker: Worker, out: Path, logs: LogCapture
) -> None:
    enqueue(("explode", (str(out), "x")))
    worker.handle(durable.event(durable.receive()), FakeLambdaContext())
    [failed] = logs.named("task.failed")
    assert "permanent" not in failed


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json", "not a task message"),
        (
            '{"v": 1, "task": "nobody.knows", "task_id": "t1", "args": [], '
            '"kwargs": {}, "enqueued_at": "2024-01-01T00:00:00Z"}',
            "is not registered in this worker",
        ),
    ],
    ids=["garbage", "unknown-task"],
)
def test_an_unreadable_message_fails_without_blocking_its_neighbours(
    durable: DurableAws, worker: Worker, out: Path, logs: LogCapture, body: str, reason: str
) -> None:
    from shared import aws

    aws.sqs().send_message(QueueUrl=durable.queues.url, MessageBody=body)
    enqueue(("record", (str(out), "fine")))
    messages = durable.receive()
    bad = next(m["MessageId"] for m in messages if m["Body"] == body)

    response = worker.handle(durable.event(messages), FakeLambdaContext())

    assert failed_ids(response) == [bad]
    assert sqs_tasks.lines(out) == ["fine"]
    [rejected] = logs.named("task.rejected")
    assert reason in rejected["error"]
    assert rejected["message_id"] == bad


def test_a_task_past_the_invocation_deadline_fails_and_is_retried_later(
    durable: DurableAws, worker: Worker, out: Path, logs: LogCapture
) -> None:
    """An ``async def`` task is cancelled at the deadline: nothing of it runs on, so it is retried."""
    [task] = enqueue(("slow_async", (str(out), "late", 2.0)))
    [message] = durable.receive()

    # 700 ms left, minus the 500 ms margin: the task has 200 ms.
    response = worker.handle(durable.event([message]), FakeLambdaContext(remaining_ms=700))

    assert failed_ids(response) == [message["MessageId"]]
    [timed_out] = logs.named("task.timed_out")
    assert timed_out["task_id"] == task.task_id
    assert timed_out["backend"] == "sqs"


def test_a_sync_task_still_running_at_the_deadline_is_reported_and_must_end_the_process(
    durable: DurableAws, worker: Worker, out: Path, logs: LogCapture
) -> None:
    """A ``def`` task's thread cannot be stopped: ``handle`` raises TaskStuck instead of returning
    while it runs on (the Lambda handler then ends the process, see test_durable_lambda)."""
    [task] = enqueue(("slow", (str(out), "stuck", 2.0)))
    [message] = durable.receive()

    with pytest.raises(TaskStuck):
        worker.handle(durable.event([message]), FakeLambdaContext(remaining_ms=700))

    [timed_out] = logs.named("task.timed_out")
    assert timed_out["task_id"] == task.task_id
    assert timed_out["still_running"] is True
    assert sqs_tasks.lines(out) == ["started stuck"]


def test_the_worker_handler_builds_its_worker_once(durable: DurableAws, out: Path) -> None:
    built: list[Worker] = []

    def build() -> Worker:
        built.append(Worker())
        return built[-1]

    handler = make_sqs_handler(build)
    enqueue(("record", (str(out), "a")), ("record", (str(out), "b")))
    for message in durable.receive_all():
        assert handler(durable.event([message]), FakeLambdaContext()) == {"batchItemFailures": []}

    assert len(built) == 1
    assert sorted(sqs_tasks.lines(out)) == ["a", "b"]
    built[0].close()


def test_worker_app_reports_queue_and_dead_letter_depth(durable: DurableAws) -> None:
    enqueue(("noop", ()), ("noop", ()))
    with TestClient(worker_app) as client:
        health = client.get("/health")
        queue = client.get("/queue")

    assert health.json() == {"status": "ok", "service": "worker"}
    assert queue.status_code == 200
    assert queue.json()["queue"]["visible"] == 2
    assert queue.json()["dead_letter_queue"]["queue_url"] == durable.queues.dlq_url
    assert queue.json()["max_receive_count"] == 3
