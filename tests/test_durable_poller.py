"""The container worker, ``python -m shared.worker``, as a real process against moto's server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from functions.notifications.app import app as notifications_app
from infra.lifecycle_check import orphans
from infra.servers import ROOT, ServerProcess, parse_json_lines
from shared import aws
from shared.background.sqs import SqsBackend
from shared.background.task import QueuedTask
from shared.settings import ConfigurationError, get_settings
from shared.worker import Poller, Worker
from tests.support import sqs_tasks
from tests.support.logs import LogCapture
from tests.support.sqs_queues import DurableAws, durable_aws_server, executor_from_settings, subprocess_env

EMAIL = "jane.doe@example.com"
TASK_MODULES = "shared.tasks,tests.support.sqs_tasks"


@pytest.fixture
def durable(monkeypatch: pytest.MonkeyPatch) -> Iterator[DurableAws]:
    with durable_aws_server(monkeypatch, DURABLE_TASKS="notifications.write_notification") as resources:
        yield resources


def start_worker(durable: DurableAws, module: str = "shared.worker", **env: str) -> ServerProcess:
    # task.running, 0.2 s into a run: what a test waits for to know a task is under way (task.started is DEBUG).
    defaults = {"TASK_MODULES": TASK_MODULES, "WORKER_WAIT_SECONDS": "1", "TASK_RUNNING_NOTICE_SECONDS": "0.2"}
    environment = subprocess_env(durable, **{**defaults, **env})
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

    worker = start_worker(durable, WORKER_CONCURRENCY="1")  # one in hand, three received and waiting
    try:
        wait_for(lambda: len(events(worker, "task.running")) == 1, worker)
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


def test_sigterm_finishes_every_message_in_hand_and_releases_those_not_started(
    durable: DurableAws, tmp_path: Path
) -> None:
    """With two messages side by side, SIGTERM lets both finish and starts none of the others."""
    out = tmp_path / "slow.txt"
    tasks = [QueuedTask(sqs_tasks.slow, (str(out), f"s{i}", 1.0), {}, "tests.durable.slow") for i in range(5)]
    asyncio.run(SqsBackend.from_settings().dispatch(tasks))

    worker = start_worker(durable, WORKER_CONCURRENCY="2")
    try:
        wait_for(lambda: len(events(worker, "task.running")) == 2, worker)
    finally:
        returncode, output = stop(worker)

    assert returncode == 0
    started = sorted(line.split()[1] for line in sqs_tasks.lines(out) if line.startswith("started"))
    finished = sorted(line.split()[1] for line in sqs_tasks.lines(out) if line.startswith("finished"))
    assert len(started) == 2
    assert finished == started, "both tasks in hand finished"
    assert [line.split()[0] for line in sqs_tasks.lines(out)][:2] == ["started", "started"], "side by side"
    assert len(events(output, "task.succeeded")) == 2
    assert events(output, "task.cancelled") == []
    [stopped] = events(output, "worker.stopped")
    assert (stopped["succeeded"], stopped["failed"], stopped["released"]) == (2, 0, 3)
    assert durable.depth() == {"visible": 3, "in_flight": 0}, "the three never started are visible again at once"


@pytest.mark.tasks_may_be_lost(
    "by design: the worker is stopped while the failed message waits in SQS for its redelivery (in the queue, not lost)"
)
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

    with pytest.raises(ConfigurationError, match="TASK_QUEUE_URL is not set"):
        Poller.from_settings()


def send_side_effect_tasks(out: Path, seconds: float, count: int = 1) -> list[QueuedTask]:
    tasks = [
        QueuedTask(sqs_tasks.side_effect_after, (str(out), f"t{i}", seconds), {}, "tests.durable.side_effect_after")
        for i in range(count)
    ]
    asyncio.run(SqsBackend.from_settings().dispatch(tasks))
    return tasks


def epoch(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def side_effects(out: Path) -> list[float]:
    return [float(line.split()[-1]) for line in sqs_tasks.lines(out) if line.startswith("side effect")]


def test_a_sync_task_past_its_timeout_does_its_side_effect_once_and_is_not_retried(
    durable: DurableAws, tmp_path: Path
) -> None:
    """A 5 s ``def`` task with a 3 s timeout: it cannot be stopped, so it is neither reported
    timed out while it runs on nor retried beside itself; it finishes once and is deleted."""
    out = tmp_path / "once.txt"
    [task] = send_side_effect_tasks(out, seconds=5.0)

    worker = start_worker(durable, TASK_TIMEOUT_SECONDS="3")
    try:
        wait_for(lambda: bool(events(worker, "task.succeeded") or events(worker, "task.timed_out")), worker)
        time.sleep(1.0)  # room for a retry to show up, if there were one
    finally:
        returncode, output = stop(worker)

    assert returncode == 0
    assert sqs_tasks.lines(out)[0] == "started t0"
    assert len(side_effects(out)) == 1, "the side effect happened exactly once"
    assert [line for line in sqs_tasks.lines(out) if line.startswith("started")] == ["started t0"], "no retry"
    for timed_out in events(output, "task.timed_out"):
        assert side_effects(out)[0] < epoch(timed_out), "no side effect after task.timed_out was reported"
    [overrunning] = events(output, "task.overrunning")
    assert overrunning["task_id"] == task.task_id
    assert overrunning["timeout_s"] == 3
    [succeeded] = events(output, "task.succeeded")
    assert succeeded["overran"] is True
    assert succeeded["attempt"] == 1
    assert durable.depth() == {"visible": 0, "in_flight": 0}, "succeeded late, deleted: never run again"
    assert durable.depth(durable.queues.dlq_url) == {"visible": 0, "in_flight": 0}


@pytest.mark.tasks_may_be_lost(
    "by design: the worker exits 3 with the message in SQS, which delivers it again after its visibility timeout"
)
def test_a_sync_task_still_running_when_its_message_would_reappear_ends_the_worker(
    durable: DurableAws, tmp_path: Path
) -> None:
    """Before the message can be received again, the process ends: its thread with it (exit code 3)."""
    aws.sqs().set_queue_attributes(QueueUrl=durable.queues.url, Attributes={"VisibilityTimeout": "3"})
    out = tmp_path / "stuck.txt"
    tasks = send_side_effect_tasks(out, seconds=30.0, count=2)

    worker = start_worker(durable, TASK_TIMEOUT_SECONDS="1", WORKER_BATCH_SIZE="10", WORKER_CONCURRENCY="1")
    try:
        returncode = worker.process.wait(timeout=20)
        output = worker.output()
    finally:
        worker.close()

    assert returncode == 3
    assert side_effects(out) == [], "the side effect never happens after task.timed_out"
    [timed_out] = events(output, "task.timed_out")
    assert timed_out["still_running"] is True
    assert timed_out["task_id"] in {task.task_id for task in tasks}
    [exiting] = events(output, "worker.exiting")
    assert exiting["exit_code"] == 3
    assert len(events(output, "task.running")) == 1, "one message's task ran; the other never started"
    assert durable.depth()["visible"] >= 1, "the message that never started was released at once"


@pytest.mark.tasks_may_be_lost(
    "by design: the worker stops at the end of its grace with the task cut; its message stays in SQS, "
    "delivered again after its visibility timeout, after this test ends"
)
def test_sigterm_waits_for_a_task_in_hand_only_for_the_shutdown_grace_period(
    durable: DurableAws, tmp_path: Path
) -> None:
    out = tmp_path / "grace.txt"
    tasks = send_side_effect_tasks(out, seconds=30.0, count=3)

    worker = start_worker(durable, SHUTDOWN_GRACE_SECONDS="0.5", WORKER_CONCURRENCY="1")
    try:
        wait_for(lambda: len(events(worker, "task.running")) == 1, worker)
    finally:
        returncode, output = stop(worker)

    assert returncode == 0
    assert side_effects(out) == []
    [started] = events(output, "task.running")
    [cancelled] = events(output, "task.cancelled")
    assert cancelled["task_id"] == started["task_id"]
    assert cancelled["started"] is True
    assert cancelled["grace_s"] == 0.5
    released = [message_id for e in events(output, "worker.released") for message_id in e["message_ids"]]
    assert len(released) == 2
    assert durable.depth() == {"visible": 2, "in_flight": 1}, "unstarted ones visible now, the cut one later"
    assert {body["task_id"] for body in durable.bodies()} == {t.task_id for t in tasks} - {started["task_id"]}


def test_sigterm_during_a_long_poll_stops_the_worker_at_once(durable: DurableAws) -> None:
    worker = start_worker(durable, WORKER_WAIT_SECONDS="20")
    try:
        wait_for(lambda: bool(events(worker, "worker.started")), worker)
        time.sleep(0.5)  # inside the 20 s poll
    finally:
        returncode, output = stop(worker)  # waits 15 s at most: less than the poll

    assert returncode == 0
    assert [e["event"] for e in parse_json_lines(output)][-2:] == ["worker.stopping", "worker.stopped"]


def test_the_poll_client_waits_longer_than_the_longest_poll() -> None:
    assert aws.sqs_long_poll().meta.config.read_timeout > 20
    assert aws.sqs().meta.config.read_timeout <= 10, "other calls keep failing fast"


def test_a_message_arriving_late_in_a_long_poll_is_run_at_once(durable: DurableAws, tmp_path: Path) -> None:
    """12 s into a 20 s poll: past the old 10 s read timeout, the receive the client gave up on took it."""
    out = tmp_path / "late.txt"
    worker = start_worker(durable, WORKER_WAIT_SECONDS="20")
    try:
        wait_for(lambda: bool(events(worker, "worker.started")), worker)
        time.sleep(12)
        asyncio.run(
            SqsBackend.from_settings().dispatch(
                [QueuedTask(sqs_tasks.record, (str(out), "late"), {}, "tests.durable.record")]
            )
        )
        wait_for(lambda: bool(events(worker, "task.succeeded")), worker, timeout=60)
    finally:
        returncode, output = stop(worker)

    assert returncode == 0
    [succeeded] = events(output, "task.succeeded")
    assert succeeded["attempt"] == 1, "received by the worker's own poll, not after a lost receive's visibility timeout"
    assert events(output, "worker.receive_failed") == []
    assert sqs_tasks.lines(out) == ["late"]


def test_sigterm_during_the_pause_after_a_failed_poll_stops_the_worker_at_once(
    monkeypatch: pytest.MonkeyPatch, logs: LogCapture
) -> None:
    """SQS unreachable: the worker pauses before polling again; a SIGTERM ends the pause, not only the poll."""
    from botocore.exceptions import EndpointConnectionError

    from shared.worker import poller as poller_module
    from tests.support.sqs_queues import durable_aws

    paused: list[str] = []

    def pause(seconds: float) -> None:
        paused.append("started")
        threading.Event().wait(seconds)  # a signal handler that raises ends this wait
        paused.append("ran to its end")

    class Unreachable:
        def receive_message(self, **_: Any) -> Any:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    monkeypatch.setattr(poller_module.time, "sleep", pause)
    monkeypatch.setattr(poller_module, "RECEIVE_ERROR_BACKOFF_S", (30.0,))
    with durable_aws(monkeypatch) as durable:
        worker = Worker()
        poller = Poller(worker, durable.queues.url, wait_seconds=1, poll_client=lambda: Unreachable())  # type: ignore[arg-type,return-value]
        previous = signal.signal(signal.SIGALRM, poller.stop)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.5)
            stats = poller.run()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    assert paused == ["started"], "the pause was cut short"
    assert len(logs.named("worker.receive_failed")) == 1
    assert logs.named("worker.stopped")
    assert stats.succeeded == stats.failed == 0


SIGNAL_DURING_A_LOG_LINE = """
import signal, sys
from shared.logs import configure_logging, get_logger
from shared.worker.poller import Poller

class Stream:
    # Delivers SIGTERM while a line is being written: structlog holds the stream's lock then.
    def write(self, text):
        sys.stdout.write(text)
        if "batch line" in text:
            signal.raise_signal(signal.SIGTERM)
    def flush(self):
        sys.stdout.flush()

configure_logging("worker", stream=Stream())
poller = Poller(None, "http://127.0.0.1:9/000000000000/q")
poller.install_signal_handlers()
get_logger("test").info("batch line")
print("the handler returned", flush=True)
"""


def test_a_signal_landing_while_a_line_is_written_does_not_deadlock_the_worker() -> None:
    """The handler logs nothing itself: the main thread may hold the log stream's lock when it runs."""
    result = subprocess.run(
        [sys.executable, "-c", SIGNAL_DURING_A_LOG_LINE],
        cwd=ROOT,
        env={**os.environ, "LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert "the handler returned" in result.stdout


def test_two_concurrent_workers_drain_one_queue_and_run_each_task_once(durable: DurableAws, tmp_path: Path) -> None:
    """Scaling out: two ``python -m functions.worker`` processes, each running ten messages side by
    side, share 300 tasks: each runs exactly once, and both logs show every run ending once."""
    out = tmp_path / "runs.txt"
    count = 300
    workers = [start_worker(durable, module="functions.worker", WORKER_CONCURRENCY="10") for _ in range(2)]
    outputs: list[tuple[int, str]] = []
    try:
        for worker in workers:
            wait_for(lambda worker=worker: bool(events(worker, "worker.started")), worker)
        tasks = [
            QueuedTask(sqs_tasks.timed_wait, (str(out), f"t{i}", 0.05), {}, "tests.durable.timed_wait")
            for i in range(count)
        ]
        asyncio.run(SqsBackend.from_settings().dispatch(tasks))
        deadline = time.monotonic() + 180
        drained = {"visible": 0, "in_flight": 0}
        # Until every task ran and the workers deleted every message (a loaded machine deletes a batch late).
        while (len(sqs_tasks.lines(out)) < count or durable.depth() != drained) and time.monotonic() < deadline:
            for worker in workers:
                assert worker.process.poll() is None, f"a worker exited early:\n{worker.output()}"
            time.sleep(0.1)
        time.sleep(0.5)  # room for a second run to show up, if there were one
    finally:
        outputs = [stop(worker) for worker in workers]

    assert [returncode for returncode, _ in outputs] == [0, 0], [output[-3000:] for _, output in outputs]
    runs = Counter(line.split()[0] for line in sqs_tasks.lines(out))
    assert runs == Counter({f"t{i}": 1 for i in range(count)}), "each task ran exactly once"
    succeeded = [len(events(output, "task.succeeded")) for _, output in outputs]
    assert sum(succeeded) == count
    assert min(succeeded) > 0, f"both workers took part: {succeeded}"
    assert sqs_tasks.most_at_once(list(sqs_tasks.runs(out).values())) > 1, "tasks ran side by side"
    assert orphans([output.splitlines() for _, output in outputs]) == [], "every run ended once, in both logs"
    assert durable.depth() == {"visible": 0, "in_flight": 0}
