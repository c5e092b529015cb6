"""``python -m shared.serve all`` (``make run``, the image's default command): every function on one port."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from infra.servers import parse_json_lines, start_function


def test_a_path_no_route_serves_is_logged_as_a_masked_path_not_as_the_mount(tmp_path: Path) -> None:
    server = start_function("all", {"NOTIFICATION_LOG_PATH": str(tmp_path / "n.log"), "LOG_FORMAT": "json"})
    try:
        missing = httpx.get(f"{server.base_url}/notifications/nowhere/jane@example.com", timeout=10)
        served = httpx.get(f"{server.base_url}/notifications/health", timeout=10)
        ids = {missing.headers["x-request-id"], served.headers["x-request-id"]}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            completed = {
                e["request_id"]: e
                for e in parse_json_lines(server.output())
                if e["event"] == "request.completed" and e.get("request_id") in ids
            }
            if len(completed) == 2:
                break
            time.sleep(0.02)
    finally:
        server.stop()
        server.close()

    assert missing.status_code == 404
    not_found = completed[missing.headers["x-request-id"]]
    assert "route" not in not_found
    assert not_found["path"] == "/notifications/nowhere/j***@example.com"
    assert not_found["service"] == "notifications"
    assert completed[served.headers["x-request-id"]]["route"] == "/health"


def test_a_function_that_cannot_start_alone_stops_the_gateway_from_starting() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from shared.app import create_app
    from shared.background.install import UnmanagedRouteError
    from shared.gateway import create_gateway

    broken = create_app("broken")
    broken.mount("/plain", FastAPI())
    with pytest.raises(UnmanagedRouteError, match="mounted at /plain"), TestClient(create_gateway({"broken": broken})):
        pass


def test_a_newline_in_a_path_reaches_its_function_and_gateway_errors_are_logged_json(tmp_path: Path) -> None:
    server = start_function("all", {"NOTIFICATION_LOG_PATH": str(tmp_path / "n.log"), "LOG_FORMAT": "json"})
    try:
        newline = httpx.post(f"{server.base_url}/notifications/send-notification/a%0Ab@example.com", timeout=10)
        nowhere = httpx.get(f"{server.base_url}/nowhere/jane@example.com", timeout=10)
        not_allowed = httpx.post(f"{server.base_url}/health", timeout=10)
        request_id = nowhere.headers.get("x-request-id")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = [e for e in parse_json_lines(server.output()) if e["event"] == "request.completed"]
            if any(e.get("request_id") == request_id for e in lines):
                break
            time.sleep(0.02)
    finally:
        server.stop()
        server.close()

    assert newline.status_code == 422, newline.text  # the function's own answer: not a valid e-mail address
    assert newline.json()["detail"][0]["loc"] == ["path", "email"]
    assert nowhere.status_code == 404
    assert nowhere.json()["detail"].startswith("No function serves /nowhere/")
    [completed] = [e for e in lines if e.get("request_id") == request_id]
    assert completed["service"] == "gateway"
    assert completed["status"] == 404
    assert completed["path"] == "/nowhere/j***@example.com"
    assert not_allowed.status_code == 405
    assert not_allowed.json() == {"detail": "Method Not Allowed"}
    assert not_allowed.headers["allow"] == "GET, HEAD"
