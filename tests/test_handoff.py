"""Handoff: a registered task that cannot finish here goes to the durable queue, and the worker runs it once.

The Lambda case runs the real runtime client against the Runtime API emulator, the container
case a real uvicorn process; both send to moto's server, and the worker runs what they handed off.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench import handoff_tasks
from infra.lambda_events import http_api_event
from infra.runtime_api import lambda_environment
from infra.servers import parse_json_lines, start_function
from shared.background import build_executor, handoff
from shared.background.runner import run_tasks
from shared.background.task import QueuedTask
from shared.worker import Worker
from tests.support.logs import LogCapture
from tests.support.sqs_queues import DurableAws, FakeLambdaContext, durable_aws, durable_aws_server, subprocess_env

TASK_MODULES = "bench.handoff_tasks"


@pytest.fixture
def durable_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[DurableAws]:
    with durable_aws_server(monkeypatch, TASK_MODULES=TASK_MODULES) as resources:
        yield resources


def run_worker(durable: DurableAws, messages: list[dict[str, Any]]) -> dict[str, Any]:
    worker = Worker()
    try:
        return dict(worker.handle(durable.event(messages), FakeLambdaContext()))
    finally:
        worker.close()


def of(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == name]


def test_on_lambda_a_task_that_would_cross_the_deadline_is_handed_off_and_the_worker_runs_it_once(
    durable_server: DurableAws, tmp_path: Path
) -> None:
    done = tmp_path / "done.txt"
    env = subprocess_env(durable_server, LAMBDA_DEADLINE_MARGIN_MS="1000")
    with lambda_environment("bench.handoff_app.handler", env=env) as api:
        configured = api.logs("handoff.configured")
        event = http_api_event(
            "/tasks/work",
            query={"path": str(done), "label": "w", "count": "4", "seconds": "0.5"},
            request_id="apigw-handoff-1",
        )
        # 3 s to run: 2 s before the margin, for four tasks that each declare up to 1 s.
        invocation = api.invoke(event, timeout_s=3.0).wait_free()
        unregistered = http_api_event(
            "/tasks/plain", query={"path": str(done), "label": "p", "count": "1", "seconds": "5"}
        )
        api.invoke(unregistered, timeout_s=1.5).wait_free()
        logs = api.logs()

    assert invocation.result["statusCode"] == 200
    [line] = configured
    assert line["enabled"] is True
    assert {"tests.handoff.work", "tests.handoff.resumable"} <= set(line["tasks"])
    assert line["at_most_once"] == ["tests.handoff.fragile"]
    [always] = of(logs, "handoff.always")  # the first invocation tells which tasks can never run here
    assert {"tests.handoff.resumable", "tests.handoff.fragile"} <= set(always["tasks"])
    assert "tests.handoff.work" not in always["tasks"]

    queued = {e["task_id"]: e for e in of(logs, "task.queued") if e["request_id"] == "apigw-handoff-1"}
    handed_off = of(logs, "task.handed_off")
    in_process = of(logs, "task.succeeded")
    assert handed_off, "at least the last task cannot fit in what is left of the invocation"
    assert {e["task_id"] for e in handed_off} | {e["task_id"] for e in in_process} == set(queued)
    assert not {e["task_id"] for e in handed_off} & {e["task_id"] for e in in_process}
    for line in handed_off:
        assert line["reason"] == "deadline"
        assert line["request_id"] == "apigw-handoff-1"
        assert line["expected_s"] == 1.0
        assert line["time_left_s"] < line["expected_s"]
        assert line["deadline_margin_s"] == 1.0
        assert line["backend"] == "lambda-extension"
        assert line["handoff_ms"] >= 0
    assert not of(logs, "task.lost")
    assert not [e for e in of(logs, "task.timed_out") if e["task"] == "tests.handoff.work"]

    # The unregistered task was cut at the deadline, and its line says why it could not be saved.
    [cut] = [e for e in of(logs, "task.timed_out") if e["task"] == "bench.handoff_tasks.plain"]
    assert cut["handoff"] == "not possible: unregistered"

    messages = durable_server.receive_all()
    bodies = {json.loads(m["Body"])["task_id"]: json.loads(m["Body"]) for m in messages}
    assert set(bodies) == {e["task_id"] for e in handed_off}
    assert {b["request_id"] for b in bodies.values()} == {"apigw-handoff-1"}
    assert {e["message_id"] for e in handed_off} == {m["MessageId"] for m in messages}

    assert run_worker(durable_server, messages) == {"batchItemFailures": []}
    assert run_worker(durable_server, messages) == {"batchItemFailures": []}  # delivered again: not run again
    assert handoff_tasks.completions(done) == {f"w-{index}": 1 for index in range(4)}


def start_server(durable: DurableAws, tmp_path: Path, grace_s: str) -> Any:
    env = subprocess_env(durable, SHUTDOWN_GRACE_SECONDS=grace_s, NOTIFICATION_LOG_PATH=str(tmp_path / "n.log"))
    return start_function("handoff", env, "--app", "bench.handoff_app:app")


def post(server: Any, kind: str, **query: Any) -> None:
    response = httpx.post(f"{server.base_url}/tasks/{kind}", params=query, timeout=10)
    assert response.status_code == 200, response.text


def wait_for_lines(path: Path, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(path.read_text().splitlines() if path.exists() else []) < count:
        assert time.monotonic() < deadline, f"only {path.read_text() if path.exists() else ''!r}"
        time.sleep(0.01)


def test_sigterm_hands_off_what_cannot_finish_in_the_grace_and_the_worker_runs_each_once(
    durable_server: DurableAws, tmp_path: Path
) -> None:
    done, gate = tmp_path / "done.txt", tmp_path / "gate"
    server = start_server(durable_server, tmp_path, grace_s="2")
    try:
        # Started before SIGTERM and running at the end of the grace: one rerun-safe, one not, one plain.
        post(server, "resumable", path=str(done), label="r", gate=str(gate))
        post(server, "fragile", path=str(done), label="f", gate=str(gate))
        post(server, "plain", path=str(done), label="p", seconds=30)
        wait_for_lines(done, 3)
        # Four requests of five 0.5 s tasks (each declares up to 1 s): about two fit in the grace.
        for index in range(4):
            post(server, "work", path=str(done), label=f"w{index}", count=5, seconds=0.5)
        server.process.send_signal(signal.SIGTERM)
        exit_code = server.process.wait(30)
    finally:
        output = server.output()
        server.close()

    assert exit_code == 0  # a requested stop, done gracefully
    events = parse_json_lines(output)
    [configured] = of(events, "handoff.configured")
    assert configured["enabled"] is True
    handed_off = {e["task_id"]: e for e in of(events, "task.handed_off")}
    succeeded = {e["task_id"] for e in of(events, "task.succeeded")}
    cancelled = {e["task"]: e for e in of(events, "task.cancelled")}
    queued = {e["task_id"]: e for e in of(events, "task.queued")}
    work = {task_id for task_id, e in queued.items() if e["task"] == "tests.handoff.work"}
    assert len(work) == 20
    assert not of(events, "task.lost")
    assert work == (set(handed_off) & work) | (succeeded & work), "every work task completed here or was handed off"
    assert not set(handed_off) & succeeded
    assert len(set(handed_off) & work) >= 4, "five 0.5 s tasks of a request do not fit in a 2 s grace"
    before_end = [e for e in handed_off.values() if e["task"] == "tests.handoff.work" and e["grace_left_s"] > 0]
    assert before_end, "some were handed off at their turn, without waiting for the end of the grace"
    assert all(e["reason"] == "shutdown" and e["grace_s"] == 2.0 for e in handed_off.values())
    # The decision compares unrounded seconds; the line shows them to the millisecond.
    assert all(e["expected_s"] > e["grace_left_s"] - e["shutdown_margin_s"] - 0.001 for e in before_end)

    # At the end of the grace: the running registered task is handed off (at-least-once), one line and
    # no task.cancelled; the at-most-once one and the unregistered one are cut, saying why.
    assert "tests.handoff.resumable" not in cancelled
    assert cancelled["tests.handoff.fragile"]["handoff"] == "not possible: already running and at_most_once"
    assert cancelled["bench.handoff_tasks.plain"]["handoff"] == "not possible: unregistered"
    assert "tests.handoff.resumable" in {e["task"] for e in handed_off.values()}

    messages = durable_server.receive_all()
    assert {json.loads(m["Body"])["task_id"] for m in messages} == set(handed_off)
    assert all(
        json.loads(m["Body"])["request_id"] == queued[json.loads(m["Body"])["task_id"]]["request_id"] for m in messages
    )
    gate.touch()
    assert run_worker(durable_server, messages) == {"batchItemFailures": []}
    completed = handoff_tasks.completions(done)
    assert {label: count for label, count in completed.items() if label.startswith("w")} == {
        f"w{r}-{t}": 1 for r in range(4) for t in range(5)
    }
    assert completed["r-0"] == 1
    assert "f-0" not in completed and "p-0" not in completed


def test_the_queue_refusing_a_handoff_runs_the_task_here_and_logs_its_loss(
    monkeypatch: pytest.MonkeyPatch, logs: LogCapture, tmp_path: Path
) -> None:
    with durable_aws(monkeypatch, TASK_ENQUEUE_ATTEMPTS="2") as resources:
        monkeypatch.setenv("TASK_QUEUE_URL", resources.queues.url + "-missing")
        from shared.settings import get_settings

        get_settings.cache_clear()
        build_executor()
        done = tmp_path / "done.txt"
        task = QueuedTask(handoff_tasks.work, (str(done), "x", 0.01), {}, "tests.handoff.work", timeout=10.0)
        # Five seconds left: the task declares 10 s, so it is handed off; the queue does not exist.
        assert asyncio.run(run_tasks([task], "inline", deadline=time.monotonic() + 5.0)) == 1
        assert not of(logs.events, "task.handed_off")
        [failed] = of(logs.events, "task.handoff_failed")
        assert failed["task_id"] == task.task_id
        assert len(of(logs.events, "task.enqueue_retry")) == 1
        assert handoff_tasks.completions(done) == {"x": 1}
        assert not of(logs.events, "task.lost"), "it fit after all"

        late = QueuedTask(handoff_tasks.work, (str(done), "y", 0.01), {}, "tests.handoff.work", timeout=1.0)
        assert asyncio.run(run_tasks([late], "inline", deadline=time.monotonic() - 0.1)) == 0
        [lost] = of(logs.events, "task.lost")
        assert lost["task_id"] == late.task_id and lost["reason"] == "deadline"
        assert "y" not in handoff_tasks.completions(done)


def test_task_handoff_off_keeps_the_timeout_and_says_so(
    monkeypatch: pytest.MonkeyPatch, logs: LogCapture, tmp_path: Path
) -> None:
    with durable_aws(monkeypatch, TASK_HANDOFF="off") as resources:
        build_executor()
        task = QueuedTask(handoff_tasks.work, (str(tmp_path / "d"), "x", 0.01), {}, "tests.handoff.work", timeout=1.0)
        assert asyncio.run(run_tasks([task], "inline", deadline=time.monotonic() - 0.1)) == 0
        [timed_out] = of(logs.events, "task.timed_out")
        assert timed_out["handoff"] == "off (TASK_HANDOFF=off)"
        assert not resources.receive()


def test_without_a_deadline_or_shutdown_nothing_is_handed_off(
    monkeypatch: pytest.MonkeyPatch, logs: LogCapture, tmp_path: Path
) -> None:
    with durable_aws(monkeypatch) as resources:
        build_executor()
        assert handoff.current().enabled
        done = tmp_path / "done.txt"
        tasks = [
            QueuedTask(handoff_tasks.work, (str(done), f"x{i}", 0.0), {}, "tests.handoff.work", timeout=1.0)
            for i in range(3)
        ]
        assert asyncio.run(run_tasks(tasks, "inline")) == 3
        assert not of(logs.events, "task.handed_off")
        assert not resources.receive()


def _connections(endpoint: str) -> int:
    """How many connections the SQS client's pool to ``endpoint`` has opened so far."""
    from shared import aws

    manager = aws.sqs()._endpoint.http_session._manager  # botocore's urllib3 PoolManager
    return int(manager.connection_from_url(endpoint).num_connections)


@pytest.mark.parametrize("on_lambda", [False, True])
def test_a_servers_warm_up_opens_the_connection_its_first_handoff_then_uses(
    durable_server: DurableAws, on_lambda: bool
) -> None:
    """In a server the first handoff pays neither the client nor its connection; on Lambda the warm-up
    (started by a task against the deadline, which may hand off at once) makes the client only."""
    from shared import aws
    from shared.background.sqs import SqsBackend
    from shared.settings import get_settings

    assert durable_server.endpoint_url is not None
    aws.reset_clients()  # a fresh process: the fixture's client made the queues
    policy = handoff.Handoff.from_settings(get_settings(), SqsBackend.from_settings)
    policy._warm_at_deadline = on_lambda
    policy.warm_up()

    assert _connections(durable_server.endpoint_url) == (0 if on_lambda else 1)
    assert durable_server.depth() == {"visible": 0, "in_flight": 0}, "the warm-up sends nothing"
    sent: list[str] = []
    aws.sqs().meta.events.register("before-send.sqs", lambda request, **_: sent.append(request.url))
    task = QueuedTask(handoff_tasks.work, ("unused", "warm", 0.0), {}, "tests.handoff.work")
    ids: dict[str, str] = {}
    asyncio.run(policy.sender.send_now([task], ids))
    assert list(ids) == [task.task_id] and len(sent) == 1
    assert _connections(durable_server.endpoint_url) == 1, "the first send reuses the warm-up's connection"
