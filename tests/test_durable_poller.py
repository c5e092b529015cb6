"""The container worker, ``python -m shared.worker``, as a real process against moto's server."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from functions.notifications.app import app as notifications_app
from shared.background.sqs import SqsBackend
from shared.background.task import QueuedTask
from shared.settings import get_settings
from shared.worker import Poller
from tests.support import sqs_tasks
from tests.support.logs import LogCapture, parse_json_lines
from tests.support.servers import ServerProcess
from tests.support.sqs_queues import DurableAws, durable_aws_server, executor_from_settings, subprocess_env

EMAIL = "jane.doe@example.com"
TASK_MODULES = "shared.tasks,tests.support.sqs_tasks"


@pytest.fixture
def durable(monkeypatch: pytest.MonkeyPatch) -> Iterator[DurableAws]:
    with durable_aws_server(monkeypatch, DURABLE_TASKS="notifications.write_notification") as resources:
        yield resources


def start_worker(durable: DurableAws, module: str = "shared.worker", **env: str) -> ServerProcess:
    environment = subprocess_env(durable, TASK_MODULES=TASK_MODULES, WORKER_WAIT_SECONDS="1", **env)
    return ServerProcess([sys.executable, "-m", module], environment, port=0)


def wait_for(condition: Callable[[], bool], worker: ServerProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if worker.process.poll() is not None:
            raise AssertionError(f"worker exited early:\n{worker.output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout}s:\n{worker.output()}")
        time.sleep(0.05)


def events(worker: ServerProcess | str, name: str) -> list[dict[str, Any]]:
    output = worker if isinstance(worker, str) else worker.output()
    return [e for e in parse_json_lines(output) if e.get("event") == name]


def stop(worker: ServerProcess) -> tuple[int, str]:
    """SIGTERM, as a container runtime sends it; the exit code and everything the worker printed."""
    try:
        worker.process.send_signal(signal.SIGTERM)
        returncode = worker.process.wait(timeout=15)
        return returncode, worker.output()
    finally:
        worker.close()


def test_requests_are_run_by_the_container_worker_which_drains_the_queue_and_stops_on_sigterm(
    durable: DurableAws, notification_log: Path, logs: LogCapture
) -> None:
    with executor_from_settings(notifications_app), TestClient(notifications_app) as client:
        for index in range(5):
            response = client.post(f"/send-notification/{EMAIL}", headers={"X-Request-ID": f"req-{index}"})
            assert response.status_code == 200
    assert durable.depth() == {"visible": 5, "in_flight": 0}

    worker = start_worker(durable, module="functions.worker")
    try:
        wait_for(lambda: len(events(worker, "task.succeeded")) == 5, worker)
    finally:
        returncode, output = stop(worker)

    assert returncode == 0
    assert notification_log.read_text() == f"notification for {EMAIL}: some notification\n" * 5
    assert durable.depth() == {"visible": 0, "in_flight": 0}, "succeeded messages are deleted"
    [stopped] = events(output, "worker.stopped")
    assert stopped["succeeded"] == 5
    assert stopped["failed"] == 0
    api_side = {e["task_id"]: e["request_id"] for e in logs.named("task.queued")}
    worker_side = {e["task_id"]: e for e in events(output, "task.succeeded")}
    assert {task_id: e["request_id"] for task_id, e in worker_side.items()} == api_side
    assert all(e["backend"] == "sqs" and e["attempt"] == 1 and e["service"] == "worker" for e in worker_side.values())


def test_sigterm_finishes_the_message_in_hand_and_leaves_the_rest_in_the_queue(
    durable: DurableAws, tmp_path: Path
) -> None:
    out = tmp_path / "slow.txt"
    tasks = [QueuedTask(sqs_tasks.slow, (str(out), f"s{i}", 1.0), {}, "tests.durable.slow") for i in range(4)]
    asyncio.run(SqsBackend.from_settings().dispatch(tasks))

    worker = start_worker(durable)
    try:
        wait_for(lambda: len(events(worker, "task.started")) == 1, worker)
    finally:
        returncode, output = stop(worker)

    assert returncode == 0
    lines = sqs_tasks.lines(out)
    [label] = [line.split()[1] for line in lines if line.startswith("started")]
    assert lines == [f"started {label}", f"finished {label}"], "the task in hand finished"
    [succeeded] = events(output, "task.succeeded")
    assert events(output, "task.cancelled") == []
    [stopped] = events(output, "worker.stopped")
    assert stopped["succeeded"] == 1
    released = [message_id for e in events(output, "worker.released") for message_id in e["message_ids"]]
    depth = durable.depth()
    assert depth["in_flight"] == 0, "released messages are visible again at once, not after their timeout"
    assert depth["visible"] == 3, "nothing lost: 1 done + 3 waiting"
    assert stopped["released"] == len(released)
    remaining = {body["task_id"] for body in durable.bodies()}
    assert remaining == {task.task_id for task in tasks} - {succeeded["task_id"]}


def test_a_failing_message_is_left_for_redelivery_and_the_worker_keeps_going(
    durable: DurableAws, tmp_path: Path
) -> None:
    out = tmp_path / "mixed.txt"
    tasks = [
        QueuedTask(sqs_tasks.explode, (str(out), "bad"), {}, "tests.durable.explode"),
        QueuedTask(sqs_tasks.record, (str(out), "good"), {}, "tests.durable.record"),
    ]
    asyncio.run(SqsBackend.from_settings().dispatch(tasks))

    worker = start_worker(durable)
    try:
        wait_for(lambda: len(events(worker, "task.succeeded")) == 1 and len(events(worker, "task.failed")) == 1, worker)
    finally:
        returncode, output = stop(worker)

    assert returncode == 0
    assert sorted(sqs_tasks.lines(out)) == ["exploding bad", "good"]
    assert durable.depth() == {"visible": 0, "in_flight": 1}, "the failed one waits out its visibility timeout"
    [started] = events(output, "worker.started")
    assert started["max_receives"] == 3
    assert started["visibility_timeout_s"] == 30


def test_the_worker_refuses_to_start_without_a_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASK_QUEUE_URL", raising=False)
    get_settings.cache_clear()

    with pytest.raises(SystemExit, match="TASK_QUEUE_URL is not set"):
        Poller.from_settings()
