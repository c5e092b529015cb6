"""A request cut at shutdown is one warning saying so, with no traceback (a real uvicorn).

uvicorn cancels the requests still running when its shutdown grace runs out; the
cancellation used to surface as "Exception in ASGI application" with a ``CancelledError``
traceback at level error: error-based alerts fired on a clean stop.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx

from infra.servers import eventually, parse_json_lines, start_function


def serve_slow(log_file: Path) -> Any:
    return start_function(
        "slow",
        {"NOTIFICATION_LOG_PATH": str(log_file), "LOG_FORMAT": "json", "SHUTDOWN_GRACE_SECONDS": "1"},
        "--app",
        "tests.support.slow_app:app",
    )


def assert_cut_once_without_traceback(output: str) -> dict[str, Any]:
    events = parse_json_lines(output)
    assert "Exception in ASGI application" not in output
    assert [e for e in events if "exception" in e] == [], "no traceback"
    [cut] = [e for e in events if e["event"] == "request.cut"]
    assert cut["level"] == "warning"
    assert cut["reason"] == "Task cancelled, timeout graceful shutdown exceeded"
    [grace_end] = [e for e in events if str(e["event"]).startswith("Cancel ")]
    assert grace_end["level"] == "warning", "the end of the grace is part of a clean stop, not an error"
    return cut


def test_a_request_cut_before_its_answer_is_a_warning_and_a_503(tmp_path: Path) -> None:
    log_file = tmp_path / "slow.log"
    server = serve_slow(log_file)
    answers: list[httpx.Response] = []
    client = threading.Thread(
        target=lambda: answers.append(httpx.post(f"{server.base_url}/sleep", params={"seconds": 60}, timeout=60))
    )
    try:
        client.start()
        eventually(lambda: log_file.exists() and "sleeping" in log_file.read_text(), what="the request in its handler")
        exit_code = server.stop(timeout=30)
        client.join(timeout=30)
        output = server.output()
    finally:
        server.close()

    assert exit_code == 0
    [answer] = answers
    assert answer.status_code == 503
    assert answer.json() == {"detail": "The server is shutting down; retry the request."}
    cut = assert_cut_once_without_traceback(output)
    assert cut["route"] == "/sleep"
    assert cut["status"] == 503 and cut["response_sent"] is False
    assert cut["request_id"] == answer.headers["x-request-id"]


def test_a_request_cut_while_its_tasks_run_is_one_warning(tmp_path: Path) -> None:
    server = serve_slow(tmp_path / "slow.log")
    try:
        response = httpx.post(f"{server.base_url}/slow/late", params={"tasks": 1, "seconds": 30}, timeout=10)
        exit_code = server.stop(timeout=30)
        output = server.output()
    finally:
        server.close()

    assert exit_code == 0
    cut = assert_cut_once_without_traceback(output)
    assert cut["route"] == "/slow/{name}"
    assert cut["status"] == 200 and cut["response_sent"] is True
    assert cut["request_id"] == response.headers["x-request-id"]


def test_a_streamed_response_cut_mid_body_is_a_warning_not_an_error(tmp_path: Path) -> None:
    log_file = tmp_path / "slow.log"
    server = serve_slow(log_file)
    received: list[bytes] = []

    def read_stream() -> None:
        try:
            with httpx.stream("GET", f"{server.base_url}/stream", timeout=60) as response:
                for chunk in response.iter_bytes():
                    received.append(chunk)
        except httpx.HTTPError:
            pass  # the server closed the stream mid-body: that is the cut

    client = threading.Thread(target=read_stream)
    try:
        client.start()
        eventually(lambda: log_file.exists() and "streaming" in log_file.read_text(), what="the stream started")
        exit_code = server.stop(timeout=30)
        client.join(timeout=30)
        output = server.output()
    finally:
        server.close()

    assert exit_code == 0
    assert received, "the client had part of the body"
    events = parse_json_lines(output)
    assert [e["event"] for e in events if e["level"] in ("error", "critical")] == [], "a clean stop logs no error"
    incomplete = [e for e in events if e["event"] == "ASGI callable returned without completing response."]
    assert all(e["level"] == "warning" for e in incomplete)
