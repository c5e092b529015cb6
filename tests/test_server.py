"""A real uvicorn process: the response comes before the task, and SIGTERM loses nothing."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from infra.servers import ServerProcess, free_port, parse_json_lines, start_function, wait_until_healthy

EMAIL = "foo@example.com"


def wait_for_task_events(server: ServerProcess, request_id: str, count: int, timeout: float = 20.0) -> list[str]:
    """The request's first ``count`` task events; the server prints them asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        events = parse_json_lines(server.output())
        names = [e["event"] for e in events if e.get("request_id") == request_id and e["event"].startswith("task.")]
        if len(names) >= count or time.monotonic() > deadline:
            return names
        time.sleep(0.02)


@contextmanager
def slow_server(log_file: Path, **env: str) -> Iterator[ServerProcess]:
    """``tests.support.slow_app`` under ``python -m shared.serve``, JSON logs, its notification log at ``log_file``."""
    server = start_function(
        "slow",
        {"NOTIFICATION_LOG_PATH": str(log_file), "LOG_FORMAT": "json", **env},
        "--app",
        "tests.support.slow_app:app",
    )
    try:
        yield server
    finally:
        server.close()


def stop_with_sigterm(server: ServerProcess) -> tuple[int, str]:
    """SIGTERM, as ``docker stop`` sends it: the exit code and everything the server printed."""
    return server.stop(timeout=30), server.output()


def test_response_arrives_while_the_task_is_still_running(tmp_path: Path) -> None:
    # Opening a FIFO for writing blocks until a reader opens it: the task cannot finish
    # before this test opens the reading end, which it does only after the response.
    fifo = tmp_path / "notifications.fifo"
    os.mkfifo(fifo)
    server = start_function(
        "notifications",
        {"NOTIFICATION_LOG_PATH": str(fifo), "LOG_FORMAT": "json", "TASK_RUNNING_NOTICE_SECONDS": "0.2"},
    )
    try:
        response = httpx.post(f"{server.base_url}/send-notification/{EMAIL}", timeout=10)
        assert response.status_code == 200
        assert response.json() == {"message": "Notification sent in the background"}
        request_id = response.headers["x-request-id"]

        # The task is running and cannot finish (the FIFO is unread): after 0.2 s it says so, once.
        assert wait_for_task_events(server, request_id, count=2) == ["task.queued", "task.running"]

        with open(fifo) as reader:
            assert reader.read() == f"notification for {EMAIL}: some notification\n"
    finally:
        exit_code = server.stop()
        output = server.output()
        server.close()
    assert exit_code == 0, "a graceful shutdown is a success"
    finished = [e for e in parse_json_lines(output) if e["event"] == "task.succeeded"]
    assert [(e["request_id"], e["task"]) for e in finished] == [(request_id, "notifications.write_notification")]


def test_sigterm_lets_in_flight_tasks_finish(tmp_path: Path) -> None:
    log_file = tmp_path / "slow.log"
    with slow_server(log_file) as server:
        for name in ("a", "b", "c"):
            # 3 s each: on a loaded machine (the suite's other workers) all three are in flight at the SIGTERM.
            response = httpx.post(f"{server.base_url}/slow/{name}", params={"tasks": 2, "seconds": 3}, timeout=10)
            assert response.json() == {"queued": 2}
        assert not log_file.exists()
        exit_code, output = stop_with_sigterm(server)

    assert exit_code == 0, "a graceful shutdown is a success"
    assert sorted(log_file.read_text().splitlines()) == ["a-0", "a-1", "b-0", "b-1", "c-0", "c-1"]
    events = parse_json_lines(output)
    names = [e["event"] for e in events]
    shutting_down = names.index("Shutting down")
    assert names.count("task.succeeded") == 6
    assert all(index > shutting_down for index, name in enumerate(names) if name == "task.succeeded")


def test_sigterm_past_the_grace_period_logs_every_unfinished_task(tmp_path: Path) -> None:
    log_file = tmp_path / "slow.log"
    with slow_server(log_file, SHUTDOWN_GRACE_SECONDS="1") as server:
        response = httpx.post(f"{server.base_url}/slow/late", params={"tasks": 3, "seconds": 30}, timeout=10)
        assert response.json() == {"queued": 3}
        exit_code, output = stop_with_sigterm(server)

    assert exit_code == 0, "a graceful shutdown is a success"
    assert not log_file.exists()
    events = parse_json_lines(output)
    queued = {e["task_id"] for e in events if e["event"] == "task.queued"}
    cancelled = [e for e in events if e["event"] == "task.cancelled"]
    assert len(queued) == 3
    assert {e["task_id"] for e in cancelled} == queued
    assert [e.get("started", True) for e in cancelled] == [True, False, False]
    assert all("started" in e for e in cancelled), "a started task says so too, as the README documents"


def test_a_fractional_grace_period_is_honoured(tmp_path: Path) -> None:
    """SHUTDOWN_GRACE_SECONDS=0.9 is 0.9 s, not int(0.9) = no grace at all."""
    log_file = tmp_path / "slow.log"
    with slow_server(log_file, SHUTDOWN_GRACE_SECONDS="0.9") as server:
        response = httpx.post(f"{server.base_url}/slow/quick", params={"tasks": 1, "seconds": 0.2}, timeout=10)
        assert response.json() == {"queued": 1}
        exit_code, output = stop_with_sigterm(server)

    assert exit_code == 0
    assert log_file.read_text() == "quick-0\n"
    assert [e for e in parse_json_lines(output) if e["event"] == "task.cancelled"] == []


def test_uvicorn_cli_prints_its_own_lines_in_the_same_json(tmp_path: Path) -> None:
    """Started by plain ``uvicorn`` (its own logging config), every line still is one JSON format."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "functions.notifications.app:app", "--port", str(port)]
    server = ServerProcess(command, {"NOTIFICATION_LOG_PATH": str(tmp_path / "n.log"), "LOG_FORMAT": "json"}, port)
    try:
        wait_until_healthy(f"{server.base_url}/health", server.process)
        request_id = httpx.post(f"{server.base_url}/send-notification/{EMAIL}").headers["x-request-id"]
        wait_for_task_events(server, request_id, count=2)
    finally:
        server.stop()
        output = server.output()
        server.close()
    lines = [line for line in output.splitlines() if line.strip()]
    events = parse_json_lines(output)
    assert len(events) == len(lines)
    loggers = {e.get("logger") for e in events}
    assert {"uvicorn.error", "uvicorn.access"} <= loggers
    access = [e["event"] for e in events if e.get("logger") == "uvicorn.access"]
    assert any('"POST /send-notification/f***%40example.com HTTP/1.1" 200' in line for line in access)
    assert EMAIL not in output
    assert {e["service"] for e in events} == {"notifications"}


def test_shared_serve_prints_request_completed_instead_of_access_lines(tmp_path: Path) -> None:
    server = start_function("notifications", {"NOTIFICATION_LOG_PATH": str(tmp_path / "n.log"), "LOG_FORMAT": "json"})
    try:
        request_id = httpx.post(f"{server.base_url}/send-notification/{EMAIL}").headers["x-request-id"]
        wait_for_task_events(server, request_id, count=2)
    finally:
        server.stop()
        events = parse_json_lines(server.output())
        server.close()
    of_request = [e["event"] for e in events if e.get("request_id") == request_id]
    assert sorted(of_request) == ["request.completed", "task.queued", "task.succeeded"]
    assert not [e for e in events if e.get("logger") == "uvicorn.access"]
    completed = next(e for e in events if e["event"] == "request.completed" and e["request_id"] == request_id)
    assert completed["route"] == "/send-notification/{email}"
    assert "path" not in completed


def test_a_sync_task_past_its_timeout_runs_on_beside_the_next_task_and_reports_its_real_end(tmp_path: Path) -> None:
    """A thread cannot be stopped: 0.5 s into a 2 s sync task it is reported overrunning, not timed
    out (its side effect is still to come), the next task runs meanwhile, and its end is logged."""
    log_file = tmp_path / "slow.log"
    with slow_server(log_file) as server:
        response = httpx.post(f"{server.base_url}/blocking/b", params={"seconds": 2.0}, timeout=10)
        assert response.json() == {"queued": 2}
        request_id = response.headers["x-request-id"]
        names = wait_for_task_events(server, request_id, count=5)
        exit_code, output = stop_with_sigterm(server)

    assert exit_code == 0
    assert log_file.read_text().splitlines() == ["b-1", "b-0"], "the second task ran while the first ran on"
    events = [e for e in parse_json_lines(output) if e.get("request_id") == request_id]
    first = [
        (e["event"], e.get("task")) for e in events if e["event"].startswith("task.") and e["event"] != "task.queued"
    ]
    assert first == [
        ("task.overrunning", "slow.blocking_write"),
        ("task.succeeded", "tests.support.slow_app.slow_write"),
        ("task.succeeded", "slow.blocking_write"),
    ], names
    [overrunning] = [e for e in events if e["event"] == "task.overrunning"]
    assert overrunning["timeout_s"] == 0.5
    [late] = [e for e in events if e["event"] == "task.succeeded" and e["task"] == "slow.blocking_write"]
    assert late["overran"] is True and late["timeout_s"] == 0.5
    assert late["duration_ms"] >= 2000
    assert late["task_id"] == overrunning["task_id"]
    assert not [e for e in events if e["event"] == "task.timed_out"]


def test_sigterm_past_the_grace_logs_a_sync_task_still_running_and_the_process_exits(tmp_path: Path) -> None:
    """Its thread never ends (it waits for a file nobody creates): the process exits all the same,
    after saying so, and the side effect never happens."""
    log_file = tmp_path / "slow.log"
    with slow_server(log_file, SHUTDOWN_GRACE_SECONDS="1") as server:
        response = httpx.post(
            f"{server.base_url}/blocking/g", params={"seconds": 0, "gate": str(tmp_path / "never")}, timeout=10
        )
        request_id = response.headers["x-request-id"]
        assert wait_for_task_events(server, request_id, count=4)[-1] == "task.succeeded"  # the second task
        exit_code, output = stop_with_sigterm(server)

    assert exit_code == 0
    assert log_file.read_text().splitlines() == ["g-1"]
    events = [e for e in parse_json_lines(output) if e.get("task") == "slow.blocking_write"]
    assert [e["event"] for e in events] == ["task.queued", "task.overrunning", "task.cancelled"]
    cancelled = events[-1]
    assert cancelled["started"] is True and cancelled["still_running"] is True
