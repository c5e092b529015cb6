"""The API side of durable tasks: what add_task sends to SQS, what it refuses, and send failures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from fastapi import BackgroundTasks, FastAPI
from fastapi.testclient import TestClient

from functions.notifications.app import app as notifications_app
from shared import aws
from shared.app import create_app
from shared.background import InlineBackend, TaskRejected, build_executor
from shared.background.lambda_extension import LambdaExtensionBackend
from shared.background.sqs import SqsBackend, TaskMessage, encode_body, message_attributes, message_size
from shared.background.task import QueuedTask
from shared.settings import get_settings
from shared.tasks.notifications import write_notification
from tests.support import sqs_tasks
from tests.support.logs import LogCapture
from tests.support.sqs_queues import DurableAws, durable_aws, executor_from_settings

EMAIL = "jane.doe@example.com"


@pytest.fixture
def durable(monkeypatch: pytest.MonkeyPatch) -> Iterator[DurableAws]:
    with durable_aws(monkeypatch, DURABLE_TASKS="notifications.write_notification") as resources:
        yield resources


@pytest.fixture
def notifications(durable: DurableAws) -> Iterator[TestClient]:
    """The unchanged notifications app, its tasks routed by this test's settings."""
    with executor_from_settings(notifications_app), TestClient(notifications_app) as client:
        yield client


def unregistered_task(path: str) -> None:
    pass


def durable_app(add: Callable[[BackgroundTasks], None]) -> TestClient:
    """An app whose one endpoint adds tasks with ``add``; DURABLE_TASKS decides where they go."""
    app: FastAPI = create_app("durabletest")

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        add(background_tasks)
        return {"status": "accepted"}

    return TestClient(app)


def add_records(path: str, count: int) -> Callable[[BackgroundTasks], None]:
    def add(tasks: BackgroundTasks) -> None:
        for index in range(count):
            tasks.add_task(sqs_tasks.record, path, f"t{index}")

    return add


def queued(path: str, name: str) -> QueuedTask:
    func = getattr(sqs_tasks, name)
    return QueuedTask(func=func, args=(path, name), kwargs={}, name=f"tests.durable.{name}")


# --- request -> queue ---------------------------------------------------------------------


def test_durable_task_is_sent_after_the_response_with_its_message(
    notifications: TestClient, durable: DurableAws, logs: LogCapture, notification_log: Any
) -> None:
    response = notifications.post(f"/send-notification/{EMAIL}", headers={"X-Request-ID": "req-durable-1"})

    assert response.status_code == 200
    assert response.json() == {"message": "Notification sent in the background"}
    assert not notification_log.exists(), "a durable task must not also run in the API process"
    [message] = durable.receive_all()
    body = json.loads(message["Body"])
    [queued_event] = logs.named("task.queued")
    assert body["task"] == "notifications.write_notification"
    assert body["args"] == [EMAIL]
    assert body["kwargs"] == {"message": "some notification"}
    assert body["task_id"] == queued_event["task_id"]
    assert body["request_id"] == "req-durable-1"
    assert body["service"] == "notifications"
    assert body["attempt"] == 1
    assert datetime.fromisoformat(body["enqueued_at"]).tzinfo is not None
    assert TaskMessage.model_validate_json(message["Body"]).call_kwargs == {"message": "some notification"}
    assert message["MessageAttributes"]["task_id"]["StringValue"] == body["task_id"]
    assert queued_event["backend"] == "sqs"
    assert queued_event["request_id"] == "req-durable-1"
    [enqueued] = logs.named("task.enqueued", task_id=body["task_id"])
    assert enqueued["message_id"] == message["MessageId"]
    assert enqueued["request_id"] == "req-durable-1"


def test_only_the_named_tasks_are_durable(
    notifications: TestClient, durable: DurableAws, logs: LogCapture, notification_log: Any
) -> None:
    response = notifications.post(f"/send-message/{EMAIL}", params={"q": "hello"})

    assert response.status_code == 200
    assert durable.receive_all() == []
    assert notification_log.read_text() == f"found query: hello\nmessage to {EMAIL}\n"
    assert {event["backend"] for event in logs.named("task.succeeded")} == {"inline"}


def test_star_sends_every_task_and_a_request_is_one_batch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, logs: LogCapture
) -> None:
    with durable_aws(monkeypatch, DURABLE_TASKS="*") as resources:
        calls: list[int] = []
        aws.sqs().meta.events.register(
            "provide-client-params.sqs.SendMessageBatch", lambda params, **_: calls.append(len(params["Entries"]))
        )
        client = durable_app(add_records(str(tmp_path / "out"), 10))
        with client:
            assert client.post("/work").status_code == 200

        bodies = resources.bodies()
    assert sorted(body["args"][1] for body in bodies) == sorted(f"t{i}" for i in range(10))
    assert all(body["kwargs"] == {} for body in bodies)
    assert calls == [10]
    assert len({body["task_id"] for body in bodies}) == 10
    assert not (tmp_path / "out").exists()


def test_without_a_queue_url_durable_tasks_run_in_process_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, logs: LogCapture, notification_log: Any
) -> None:
    monkeypatch.setenv("DURABLE_TASKS", "notifications.write_notification")
    monkeypatch.delenv("TASK_QUEUE_URL", raising=False)
    get_settings.cache_clear()

    executor = build_executor()

    assert isinstance(executor.backend_for(QueuedTask(write_notification, (EMAIL,), {}, "x")), InlineBackend)
    [warning] = logs.named("durable_tasks.not_configured")
    assert warning["durable_tasks"] == ["notifications.write_notification"]
    assert warning["level"] == "warning"


# --- rejected at add_task time --------------------------------------------------------------


@pytest.mark.parametrize(
    ("add", "reason", "status", "level"),
    [
        (lambda tasks: tasks.add_task(unregistered_task, "x"), "is not registered", 500, "error"),
        (
            lambda tasks: tasks.add_task(sqs_tasks.record, "x", datetime(2024, 1, 1)),
            "not JSON-serializable",
            500,
            "error",
        ),
        (lambda tasks: tasks.add_task(sqs_tasks.record, ("a", "b"), "x"), "would not arrive unchanged", 500, "error"),
        (lambda tasks: tasks.add_task(sqs_tasks.record, {1: "a"}, "x"), "would not arrive unchanged", 500, "error"),
        # What depends on the client's values is the client's error: a 4xx, and a warning.
        (lambda tasks: tasks.add_task(sqs_tasks.record, "x", label=float("nan")), "NaN or an infinity", 422, "warning"),
        (lambda tasks: tasks.add_task(sqs_tasks.record, "x", float("-inf")), "NaN or an infinity", 422, "warning"),
        (lambda tasks: tasks.add_task(sqs_tasks.record, {"k": "\udfff"}, "x"), "lone surrogate", 422, "warning"),
        (
            lambda tasks: tasks.add_task(sqs_tasks.record, "x" * 262_144, "x"),
            "over the SQS limit of 262144",
            413,
            "warning",
        ),
    ],
    ids=["unregistered", "datetime", "tuple", "int-keys", "nan", "infinity", "lone-surrogate", "oversize"],
)
def test_a_task_that_cannot_be_queued_fails_the_request_and_sends_nothing(
    monkeypatch: pytest.MonkeyPatch,
    logs: LogCapture,
    add: Callable[[BackgroundTasks], None],
    reason: str,
    status: int,
    level: str,
) -> None:
    with durable_aws(monkeypatch, DURABLE_TASKS="*") as resources:

        def add_valid_then_invalid(tasks: BackgroundTasks) -> None:
            tasks.add_task(sqs_tasks.record, "path", "valid")
            add(tasks)

        with durable_app(add_valid_then_invalid) as client:
            response = client.post("/work")
        remaining = resources.receive_all()

    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["detail"].startswith("background task rejected: ")
    assert reason in response.json()["detail"]
    assert remaining == [], "nothing half-queued: the valid task of the request is not sent either"
    assert logs.named("task.queued") == []
    [rejected] = logs.named("task.rejected")
    assert rejected["level"] == level and reason in rejected["error"] and rejected["task_id"]


def test_a_message_of_exactly_the_limit_is_accepted_and_one_byte_more_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    def padded(pad: int) -> QueuedTask:
        return QueuedTask(sqs_tasks.record, ("x" * pad, "label"), {}, "tests.durable.record")

    with durable_aws(monkeypatch) as resources:
        backend = SqsBackend.from_settings()
        empty = padded(0)
        name = "tests.durable.record"
        enqueued_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        overhead = message_size(encode_body(empty, name, {}, enqueued_at), message_attributes(name, empty))
        fits = padded(262_144 - overhead)

        backend.accept(fits)
        with pytest.raises(TaskRejected, match="262145 bytes, over the SQS limit of 262144"):
            backend.accept(padded(262_144 - overhead + 1))
        asyncio.run(backend.dispatch([fits]))
        [body] = resources.bodies()
    assert body["task_id"] == fits.task_id


# --- batching and send failures --------------------------------------------------------------


def test_batches_hold_at_most_ten_messages_and_at_most_the_size_limit(
    monkeypatch: pytest.MonkeyPatch, logs: LogCapture
) -> None:
    with durable_aws(monkeypatch) as resources:
        calls: list[int] = []
        aws.sqs().meta.events.register(
            "provide-client-params.sqs.SendMessageBatch", lambda params, **_: calls.append(len(params["Entries"]))
        )
        backend = SqsBackend.from_settings()
        small = [queued("p", "record") for _ in range(23)]
        big = [QueuedTask(sqs_tasks.record, ("x" * 100_000, f"big{i}"), {}, "tests.durable.record") for i in range(3)]
        asyncio.run(backend.dispatch(small))
        asyncio.run(backend.dispatch(big))
        bodies = resources.bodies()

    assert calls == [10, 10, 3, 2, 1]
    assert sorted(body["task_id"] for body in bodies) == sorted(task.task_id for task in small + big)
    assert len(logs.named("task.enqueued")) == 26


class FlakyClient:
    """Real moto SQS behind a script of failures: an exception, then one entry failed server-side."""

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.calls: list[list[str]] = []

    def __call__(self) -> FlakyClient:
        return self

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append([entry["Id"] for entry in Entries])
        step = self.script.pop(0) if self.script else "ok"
        if step == "connection":
            raise EndpointConnectionError(endpoint_url=QueueUrl)
        if step in ("server-fault", "sender-fault"):
            failed, rest = Entries[0], Entries[1:]
            response = dict(aws.sqs().send_message_batch(QueueUrl=QueueUrl, Entries=rest)) if rest else {}
            response["Failed"] = [
                {"Id": failed["Id"], "SenderFault": step == "sender-fault", "Code": "Boom", "Message": step}
            ]
            return response
        return dict(aws.sqs().send_message_batch(QueueUrl=QueueUrl, Entries=Entries))


def test_failed_sends_are_retried_until_every_task_is_queued_once(
    monkeypatch: pytest.MonkeyPatch, logs: LogCapture
) -> None:
    with durable_aws(monkeypatch) as resources:
        client = FlakyClient(["connection", "server-fault"])
        backend = SqsBackend(resources.queues.url, client=client, backoff_seconds=0.0, attempts=4)
        tasks = [queued("p", "record") for _ in range(3)]
        asyncio.run(backend.dispatch(tasks))
        bodies = resources.bodies()

    ids = [task.task_id for task in tasks]
    assert client.calls == [ids, ids, [ids[0]]]
    assert sorted(body["task_id"] for body in bodies) == sorted(ids)
    retries = logs.named("task.enqueue_retry")
    assert [event["task_ids"] for event in retries] == [ids, [ids[0]]]
    assert [event["error_type"] for event in retries] == ["EndpointConnectionError", "Boom"]
    assert logs.named("task.enqueue_failed") == []


def test_a_sender_fault_is_not_retried_and_is_logged_as_lost(monkeypatch: pytest.MonkeyPatch, logs: LogCapture) -> None:
    with durable_aws(monkeypatch) as resources:
        client = FlakyClient(["sender-fault"])
        backend = SqsBackend(resources.queues.url, client=client, backoff_seconds=0.0)
        tasks = [queued("p", "record") for _ in range(2)]
        asyncio.run(backend.dispatch(tasks))
        bodies = resources.bodies()

    assert len(client.calls) == 1
    assert [body["task_id"] for body in bodies] == [tasks[1].task_id]
    [lost] = logs.named("task.enqueue_failed")
    assert lost["task_ids"] == [tasks[0].task_id]
    assert lost["level"] == "error"


def test_when_sending_keeps_failing_every_lost_task_is_logged_and_the_response_is_unchanged(
    monkeypatch: pytest.MonkeyPatch, logs: LogCapture
) -> None:
    with durable_aws(monkeypatch, DURABLE_TASKS="*", TASK_ENQUEUE_ATTEMPTS="3") as resources:
        monkeypatch.setenv("TASK_QUEUE_URL", resources.queues.url + "-does-not-exist")
        get_settings.cache_clear()
        client = durable_app(add_records("p", 12))
        with client:
            response = client.post("/work", headers={"X-Request-ID": "req-lost"})

    assert response.status_code == 200
    assert response.json() == {"status": "accepted"}
    queued_ids = [event["task_id"] for event in logs.named("task.queued")]
    failures = logs.named("task.enqueue_failed")
    assert len(queued_ids) == 12
    assert sorted(task_id for event in failures for task_id in event["task_ids"]) == sorted(queued_ids)
    assert all(event["request_id"] == "req-lost" and event["enqueue_attempts"] == 3 for event in failures)
    assert all("does not exist" in event["error"].lower() for event in failures), failures
    assert len(logs.named("task.enqueue_retry")) == 2 * len(failures)


# --- Lambda: sent after the response, before the freeze ---------------------------------------


def test_on_lambda_sending_is_handed_to_the_post_response_runner(
    monkeypatch: pytest.MonkeyPatch, logs: LogCapture
) -> None:
    with durable_aws(monkeypatch, DURABLE_TASKS="*", TASK_BACKEND="lambda-extension") as resources:
        # Not on Lambda here: the extension cannot register, so deferred jobs run at once.
        monkeypatch.setattr(LambdaExtensionBackend, "_instance", None)
        deferred: list[str] = []
        original = LambdaExtensionBackend.defer

        async def recording_defer(self: LambdaExtensionBackend, job: Any, *, label: str = "job") -> None:
            deferred.append(label)
            await original(self, job, label=label)

        monkeypatch.setattr(LambdaExtensionBackend, "defer", recording_defer)
        executor = build_executor()
        backend = executor.backend_for(queued("p", "record"))
        assert isinstance(backend, SqsBackend)

        asyncio.run(backend.dispatch([queued("p", "record")]))
        bodies = resources.bodies()

    assert deferred == ["sqs.send"]
    assert len(bodies) == 1


def test_a_send_cut_short_logs_the_tasks_that_never_left(monkeypatch: pytest.MonkeyPatch, logs: LogCapture) -> None:
    with durable_aws(monkeypatch) as resources:

        async def defer_with_deadline(job: Any, *, label: str = "job") -> None:
            try:
                async with asyncio.timeout(0.2):
                    await job()
            except TimeoutError:
                pass

        client = FlakyClient(["connection"] * 10)
        backend = SqsBackend(resources.queues.url, client=client, backoff_seconds=5.0, defer=defer_with_deadline)
        tasks = [queued("p", "record") for _ in range(2)]
        asyncio.run(backend.dispatch(tasks))

    [lost] = logs.named("task.enqueue_failed")
    assert lost["task_ids"] == [task.task_id for task in tasks]
    assert lost["error_type"] == "CancelledError"
