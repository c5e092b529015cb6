"""Every behaviour of the seed tutorial, on the notifications function."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

EMAIL = "foo@example.com"


def test_send_notification_writes_the_notification(notifications_client: TestClient, notification_log: Path) -> None:
    response = notifications_client.post(f"/send-notification/{EMAIL}")

    assert response.status_code == 200
    assert response.json() == {"message": "Notification sent in the background"}
    assert notification_log.read_text() == f"notification for {EMAIL}: some notification\n"


def test_dependency_and_operation_tasks_run_in_order(notifications_client: TestClient, notification_log: Path) -> None:
    response = notifications_client.post(f"/send-message/{EMAIL}", params={"q": "some-query"})

    assert response.json() == {"message": "Message sent"}
    assert notification_log.read_text() == f"found query: some-query\nmessage to {EMAIL}\n"


def test_dependency_adds_nothing_without_query(notifications_client: TestClient, notification_log: Path) -> None:
    notifications_client.post(f"/send-message/{EMAIL}")

    assert notification_log.read_text() == f"message to {EMAIL}\n"


def test_sub_dependency_task_comes_first(notifications_client: TestClient, notification_log: Path) -> None:
    response = notifications_client.post(
        f"/send-audited-message/{EMAIL}", params={"q": "hello"}, headers={"User-Agent": "pytest-agent"}
    )

    assert response.json() == {"message": "Message sent"}
    assert notification_log.read_text() == (
        f"client: pytest-agent\nfound query: hello (from pytest-agent)\nmessage to {EMAIL}\n"
    )


def test_async_and_sync_tasks_in_one_request(notifications_client: TestClient, notification_log: Path) -> None:
    response = notifications_client.post(f"/send-welcome/{EMAIL}")

    assert response.json() == {"message": "Message sent"}
    assert notification_log.read_text() == (
        f"email to {EMAIL}: Thank you for using our service\nEmail sent to {EMAIL}\n"
    )


def test_starlette_response_with_a_single_background_task(
    notifications_client: TestClient, notification_log: Path
) -> None:
    response = notifications_client.post(f"/unsubscribe/{EMAIL}")

    assert response.json() == {"message": "Unsubscribed"}
    assert notification_log.read_text() == f"unsubscribed {EMAIL}\n"


@pytest.mark.parametrize("run_async", [False, True], ids=["def-task", "async-def-task"])
def test_processing_is_accepted_then_done_in_the_background(
    notifications_client: TestClient, notification_log: Path, run_async: bool
) -> None:
    response = notifications_client.post("/process", json={"data": {"a": 1, "b": [2, 3]}, "run_async": run_async})

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "processing started"
    assert notification_log.read_text().startswith(f"processed {body['job_id']}: 2 keys, sha256 ")


@pytest.mark.parametrize("bad", ["not-an-email", "foo@", "@example.com", "foo bar@example.com"])
def test_invalid_email_is_422_and_writes_nothing(
    notifications_client: TestClient, notification_log: Path, bad: str
) -> None:
    response = notifications_client.post(f"/send-notification/{bad}")

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["path", "email"]
    assert "email address" in detail["msg"]
    assert not notification_log.exists()


def test_process_rejects_a_body_that_is_not_an_object(notifications_client: TestClient, notification_log: Path) -> None:
    response = notifications_client.post("/process", json={"data": [1, 2]})

    assert response.status_code == 422
    assert not notification_log.exists()


def test_concurrent_appends_never_interleave(notification_log: Path) -> None:
    from shared.tasks.notifications import write_notification

    def write_many(worker: int) -> None:
        for index in range(200):
            write_notification(f"user{worker}-{index}@example.com", message="x" * 500)

    threads = [threading.Thread(target=write_many, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    lines = notification_log.read_text().splitlines()
    assert len(lines) == 8 * 200
    assert all(line.startswith("notification for user") and line.endswith(": " + "x" * 500) for line in lines)


def test_a_missing_notification_log_directory_is_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.settings import get_settings
    from shared.tasks.notifications import write_notification

    nested = tmp_path / "logs" / "today" / "notifications.log"
    monkeypatch.setenv("NOTIFICATION_LOG_PATH", str(nested))
    get_settings.cache_clear()
    write_notification(EMAIL, message="first")
    write_notification(EMAIL, message="second")
    assert nested.read_text() == f"notification for {EMAIL}: first\nnotification for {EMAIL}: second\n"


def test_health(notifications_client: TestClient) -> None:
    assert notifications_client.get("/health").json() == {"status": "ok", "service": "notifications"}


@pytest.mark.parametrize(
    "query",
    [
        "x\nnotification for victim@example.com: forged",
        "x\r\nnotification for victim@example.com: forged",
        "x\rnotification for victim@example.com: forged",
        "x\u2028notification for victim@example.com: forged",
        "x\x85notification for victim@example.com: forged",
    ],
)
def test_a_request_cannot_forge_a_line_of_the_notification_log(
    notifications_client: TestClient, notification_log: Path, query: str
) -> None:
    response = notifications_client.post(f"/send-message/{EMAIL}", params={"q": query})

    assert response.status_code == 200
    lines = notification_log.read_text().split("\n")
    assert lines[-1] == "", "every entry ends its line"
    assert len(lines[:-1]) == 2, "one line per task, whatever the input"
    assert lines[0].startswith("found query: x\\x") or lines[0].startswith("found query: x\\u2028")
    assert lines[1] == f"message to {EMAIL}"
    assert not any(line.startswith("notification for victim") for line in notification_log.read_text().splitlines())
