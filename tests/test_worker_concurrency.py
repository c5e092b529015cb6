"""The worker runs a batch's messages side by side, up to WORKER_CONCURRENCY (shared/worker/batch.py).

Overlap is read from the start and end times the tasks record (``sqs_tasks.timed_*``), never
from how long a batch took: speed is ``make bench``'s (its worker section).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.background.sqs import SqsBackend
from shared.background.task import QueuedTask
from shared.worker import Worker
from tests.support import sqs_tasks
from tests.support.logs import LogCapture
from tests.support.sqs_queues import DurableAws, FakeLambdaContext, durable_aws

TaskFunc = Callable[..., Any]


@pytest.fixture
def durable(monkeypatch: pytest.MonkeyPatch) -> Iterator[DurableAws]:
    with durable_aws(monkeypatch, max_receives=3) as resources:
        yield resources


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "runs.txt"


def send(out: Path, *tasks: tuple[TaskFunc, str, float]) -> list[QueuedTask]:
    """Queue ``(task, label, seconds)`` tasks as the API side does; the messages of one receive, in order."""
    queued = [
        QueuedTask(func, (str(out), label, seconds), {}, f"tests.durable.{func.__name__}")
        for func, label, seconds in tasks
    ]
    asyncio.run(SqsBackend.from_settings().dispatch(queued))
    return queued


def receive(durable: DurableAws, count: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while len(messages) < count:
        batch = durable.receive()
        assert batch, f"only {len(messages)} of {count} messages arrived"
        messages.extend(batch)
    return messages


def label_of(message: dict[str, Any]) -> str:
    return str(json.loads(message["Body"])["args"][1])


def run_batch(
    durable: DurableAws, worker: Worker, messages: list[dict[str, Any]], groups: dict[str, str] | None = None
) -> dict[str, Any]:
    event = durable.event(messages)
    for record in event["Records"]:
        if groups and (group := groups.get(label_of({"Body": record["body"]}))):
            record["attributes"]["MessageGroupId"] = group  # as SQS sets it on a FIFO queue's messages
    return dict(worker.handle(event, FakeLambdaContext()))


def failed(response: dict[str, Any]) -> list[str]:
    return [failure["itemIdentifier"] for failure in response["batchItemFailures"]]


def test_async_tasks_of_a_batch_wait_side_by_side(durable: DurableAws, out: Path, logs: LogCapture) -> None:
    labels = [f"w{i}" for i in range(6)]
    send(out, *[(sqs_tasks.timed_wait, label, 0.3) for label in labels])
    worker = Worker(concurrency=10)
    try:
        response = run_batch(durable, worker, receive(durable, 6))
    finally:
        worker.close()

    assert failed(response) == []
    runs = sqs_tasks.runs(out)
    assert sorted(runs) == labels
    starts, ends = [start for start, _ in runs.values()], [end for _, end in runs.values()]
    assert max(starts) < min(ends), "each task started before any ended: they waited side by side"
    assert len(logs.named("task.succeeded")) == 6


def test_def_tasks_run_in_threads_bounded_by_the_concurrency(durable: DurableAws, out: Path) -> None:
    send(out, *[(sqs_tasks.timed_block, f"b{i}", 0.3) for i in range(7)])
    worker = Worker(concurrency=3)
    try:
        response = run_batch(durable, worker, receive(durable, 7))
    finally:
        worker.close()

    assert failed(response) == []
    runs = sqs_tasks.runs(out)
    assert len(runs) == 7
    assert sqs_tasks.most_at_once(list(runs.values())) == 3, "three threads at a time, never more"


def test_one_failing_task_of_a_concurrent_batch_is_the_only_one_sent_back(
    durable: DurableAws, out: Path, logs: LogCapture
) -> None:
    send(
        out,
        (sqs_tasks.timed_wait, "a", 0.3),
        (sqs_tasks.timed_explode, "bad", 0.1),
        (sqs_tasks.timed_wait, "b", 0.3),
        (sqs_tasks.timed_wait, "c", 0.3),
    )
    messages = receive(durable, 4)
    by_label = {label_of(message): message["MessageId"] for message in messages}
    worker = Worker(concurrency=10)
    try:
        response = run_batch(durable, worker, messages)
    finally:
        worker.close()

    assert failed(response) == [by_label["bad"]]
    runs = sqs_tasks.runs(out)
    assert sorted(runs) == ["a", "b", "bad", "c"]
    assert runs["bad"][1] < min(runs[label][1] for label in "abc"), "it failed while the others still ran"
    [failure] = logs.named("task.failed")
    assert failure["task"] == "tests.durable.timed_explode"
    assert len(logs.named("task.succeeded")) == 3
    assert [item["status"] for item in durable.idempotency_items()] == ["COMPLETED"] * 3, "the failed one forgotten"


def test_with_concurrency_1_messages_run_one_after_another_in_order(durable: DurableAws, out: Path) -> None:
    send(out, *[(sqs_tasks.timed_wait, f"s{i}", 0.05) for i in range(4)])
    messages = receive(durable, 4)
    worker = Worker(concurrency=1)
    try:
        response = run_batch(durable, worker, messages)
    finally:
        worker.close()

    assert failed(response) == []
    runs = sqs_tasks.runs(out)
    order = [label_of(message) for message in messages]
    assert sorted(runs, key=lambda label: runs[label][0]) == order, "in the order SQS delivered them"
    for earlier, later in itertools.pairwise(order):
        assert runs[earlier][1] <= runs[later][0], f"{later} started after {earlier} ended"


def test_messages_of_one_message_group_never_run_side_by_side(durable: DurableAws, out: Path) -> None:
    labels = ["a1", "b1", "a2", "b2", "a3"]
    send(out, *[(sqs_tasks.timed_wait, label, 0.2) for label in labels])
    messages = receive(durable, 5)
    worker = Worker(concurrency=10)
    try:
        response = run_batch(durable, worker, messages, groups={label: label[0] for label in labels})
    finally:
        worker.close()

    assert failed(response) == []
    runs = sqs_tasks.runs(out)
    for group in "ab":
        order = [label_of(m) for m in messages if label_of(m).startswith(group)]
        for earlier, later in itertools.pairwise(order):
            assert runs[earlier][1] <= runs[later][0], f"{later} waited for {earlier}, of its group"
    assert sqs_tasks.most_at_once(list(runs.values())) == 2, "the two groups ran side by side"


def test_after_a_failure_the_rest_of_its_message_group_waits_for_the_next_receive(
    durable: DurableAws, out: Path, logs: LogCapture
) -> None:
    send(
        out,
        (sqs_tasks.timed_wait, "a1", 0.05),
        (sqs_tasks.timed_explode, "a2", 0.05),
        (sqs_tasks.timed_wait, "a3", 0.05),
        (sqs_tasks.timed_wait, "b1", 0.05),
    )
    messages = receive(durable, 4)
    by_label = {label_of(message): message["MessageId"] for message in messages}
    worker = Worker(concurrency=10)
    try:
        response = run_batch(durable, worker, messages, groups={"a1": "a", "a2": "a", "a3": "a", "b1": "b"})
    finally:
        worker.close()

    assert sorted(failed(response)) == sorted([by_label["a2"], by_label["a3"]])
    assert sorted(sqs_tasks.runs(out)) == ["a1", "a2", "b1"], "a3 never ran out of its order"
    assert len([line for line in logs.events if "started_at" in line]) == 3, "one end per run, each with its start"


def test_the_same_task_twice_in_one_batch_runs_once(durable: DurableAws, out: Path, logs: LogCapture) -> None:
    [queued] = send(out, (sqs_tasks.timed_wait, "once", 0.1))
    [message] = receive(durable, 1)
    worker = Worker(concurrency=10)
    try:
        response = run_batch(durable, worker, [message, {**message, "MessageId": "second-delivery"}])
    finally:
        worker.close()

    assert failed(response) == []
    assert sorted(sqs_tasks.runs(out)) == ["once"]
    [duplicate] = logs.named("task.duplicate")
    assert duplicate["task_id"] == queued.task_id
    assert logs.named("task.end_repeated") == []
