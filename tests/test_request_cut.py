"""A request cut at shutdown is one warning saying so, with no traceback (a real uvicorn).

uvicorn cancels the requests still running when its shutdown grace runs out; the
cancellation used to surface as "Exception in ASGI application" with a ``CancelledError``
traceback at level error: error-based alerts fired on a clean stop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
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


def stop_during(log_file: Path, client: Callable[[str], None], marker: str) -> tuple[int, str]:
    """Serve the slow app, run ``client`` against it in a thread, and stop the server (SIGTERM) once
    the request has written ``marker`` to the log: its exit code and output."""
    server = serve_slow(log_file)
    thread = threading.Thread(target=client, args=(server.base_url,))
    try:
        thread.start()
        eventually(lambda: log_file.exists() and marker in log_file.read_text(), what=f"{marker!r} in the log")
        exit_code = server.stop(timeout=30)
        thread.join(timeout=30)
        return exit_code, server.output()
    finally:
        server.close()


def test_a_request_cut_before_its_answer_is_a_warning_and_a_503(tmp_path: Path) -> None:
    answers: list[httpx.Response] = []

    def client(base_url: str) -> None:
        answers.append(httpx.post(f"{base_url}/sleep", params={"seconds": 60}, timeout=60))

    exit_code, output = stop_during(tmp_path / "slow.log", client, "sleeping")

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
    received: list[bytes] = []

    def read_stream(base_url: str) -> None:
        try:
            with httpx.stream("GET", f"{base_url}/stream", timeout=60) as response:
                for chunk in response.iter_bytes():
                    received.append(chunk)
        except httpx.HTTPError:
            pass  # the server closed the stream mid-body: that is the cut

    exit_code, output = stop_during(tmp_path / "slow.log", read_stream, "streaming")

    assert exit_code == 0
    assert received, "the client had part of the body"
    events = parse_json_lines(output)
    assert [e["event"] for e in events if e["level"] in ("error", "critical")] == [], "a clean stop logs no error"
    incomplete = [e for e in events if e["event"] == "ASGI callable returned without completing response."]
    assert all(e["level"] == "warning" for e in incomplete)
