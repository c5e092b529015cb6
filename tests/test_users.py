"""functions/users against moto: the user, the welcome e-mail and the audit record really exist."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from fastapi.testclient import TestClient

from shared import aws
from shared.settings import get_settings
from tests.support.aws_resources import AwsState
from tests.support.logs import LogCapture

NAME = "Jane Doe"
EMAIL = "jane.doe@example.com"


pytestmark = pytest.mark.usefixtures("state")  # moto's mock_aws with the template's resources (conftest)


@pytest.fixture
def client() -> Iterator[TestClient]:
    from functions.users.app import app

    with TestClient(app) as test_client:
        yield test_client


def register(client: TestClient, name: str = NAME, email: str = EMAIL) -> Any:
    return client.post("/users", json={"name": name, "email": email})


def test_register_stores_the_user_and_reserves_the_address(client: TestClient, state: AwsState) -> None:
    response = register(client)

    assert response.status_code == 201
    user = response.json()
    assert user["name"] == NAME and user["email"] == EMAIL and len(user["id"]) == 32
    assert response.headers["location"] == f"http://testserver/users/{user['id']}"
    table = state.settings.users_table
    assert state.item(table, id=user["id"]) == user
    assert state.item(table, id=f"email#{EMAIL}") == {"id": f"email#{EMAIL}", "user_id": user["id"]}


def test_register_sends_the_welcome_email_through_ses(client: TestClient, state: AwsState) -> None:
    register(client)

    [message] = state.sent_emails()
    assert message.source == state.settings.mail_sender
    assert message.destinations["ToAddresses"] == [EMAIL]
    assert message.subject == "Welcome aboard"
    assert f"Hello {NAME}," in message.body


def test_register_appends_an_audit_record(client: TestClient, state: AwsState) -> None:
    response = register(client)
    user_id = response.json()["id"]

    [record] = state.items(state.settings.audit_table)
    assert record["subject"] == f"user#{user_id}"
    assert record["action"] == "user.registered"
    assert record["details"] == {"name": NAME}
    assert record["service"] == "users"
    assert record["request_id"] == response.headers["x-request-id"]
    assert record["event"] == f"{record['occurred_at']}#{record['event_id']}"


def test_register_logs_both_tasks_and_never_the_raw_address(client: TestClient, logs: LogCapture) -> None:
    response = register(client)
    request_id = response.headers["x-request-id"]

    for task in ("email.send_welcome", "audit.record"):
        [done] = logs.named("task.succeeded", task=task)
        assert done["request_id"] == request_id and done["service"] == "users" and done["backend"] == "inline"
    [sent] = logs.named("email.sent")
    assert sent["to"] == "j***@example.com"
    assert EMAIL not in logs.stream.getvalue()


def test_same_address_again_is_409_and_writes_nothing(client: TestClient, state: AwsState) -> None:
    register(client)
    before = state.snapshot()

    response = register(client, name="Someone Else", email="Jane.Doe@EXAMPLE.com")

    assert response.status_code == 409
    assert response.json() == {"detail": "A user with this e-mail address is already registered."}
    assert state.snapshot() == before


def test_the_conditional_write_decides_not_a_prior_read(client: TestClient, state: AwsState) -> None:
    """A concurrent registration that reserved the address first makes this one lose,
    even though no user row for it exists yet: nothing is read before the write."""
    table = aws.dynamodb().Table(state.settings.users_table)
    table.put_item(Item={"id": f"email#{EMAIL}", "user_id": "f" * 32})
    before = state.snapshot()

    response = register(client)

    assert response.status_code == 409
    assert state.snapshot() == before


def test_get_user(client: TestClient) -> None:
    user = register(client).json()

    response = client.get(f"/users/{user['id']}")

    assert response.status_code == 200
    assert response.json() == user


def test_unknown_user_is_404_json(client: TestClient) -> None:
    response = client.get(f"/users/{'a' * 32}")

    assert response.status_code == 404
    assert response.json() == {"detail": f"User {'a' * 32} not found."}


@pytest.mark.parametrize("user_id", ["nope", "A" * 32, "a" * 33, "email%23jane@example.com"])
def test_malformed_user_id_is_422(client: TestClient, user_id: str) -> None:
    response = client.get(f"/users/{user_id}")

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "user_id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": EMAIL}, "name"),
        ({"name": NAME}, "email"),
        ({"name": "", "email": EMAIL}, "name"),
        ({"name": "   ", "email": EMAIL}, "name"),
        ({"name": "x" * 101, "email": EMAIL}, "name"),
        ({"name": "Jane\nBcc: evil@example.com", "email": EMAIL}, "name"),
        ({"name": "Jane\x00", "email": EMAIL}, "name"),
        ({"name": NAME, "email": "not-an-address"}, "email"),
        ({"name": NAME, "email": "a" * 250 + "@example.com"}, "email"),
        ({"name": NAME, "email": EMAIL, "admin": True}, "admin"),
        ({"name": 42, "email": EMAIL}, "name"),
    ],
)
def test_bad_registration_is_422_and_writes_nothing(
    client: TestClient, state: AwsState, body: dict[str, Any], field: str
) -> None:
    before = state.snapshot()

    response = client.post("/users", json=body)

    assert response.status_code == 422
    assert field in {error["loc"][-1] for error in response.json()["detail"]}
    assert state.snapshot() == before


def test_body_that_is_not_json_is_422(client: TestClient, state: AwsState) -> None:
    before = state.snapshot()

    response = client.post("/users", content=b"name=Jane", headers={"content-type": "application/json"})

    assert response.status_code == 422
    assert state.snapshot() == before


def test_oversized_body_is_413_and_writes_nothing(client: TestClient, state: AwsState) -> None:
    before = state.snapshot()
    body = json.dumps({"name": NAME, "email": EMAIL, "padding": "x" * 20_000})

    response = client.post("/users", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 413
    assert response.json() == {"detail": "Request body is larger than the limit of 16384 bytes."}
    assert state.snapshot() == before


def test_mail_backend_log_writes_the_notification_log_instead(
    client: TestClient, state: AwsState, monkeypatch: pytest.MonkeyPatch, notification_log: Path
) -> None:
    monkeypatch.setenv("MAIL_BACKEND", "log")
    get_settings.cache_clear()

    register(client)

    assert state.sent_emails() == []
    assert (
        notification_log.read_text()
        == f"email to {EMAIL}: [Welcome aboard] Hello {NAME}, Thank you for signing up. Your account is ready.\n"
    )


def _raise_on_get_item(code: str, http_status: int) -> Any:
    response: Any = {"Error": {"Code": code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": http_status}}
    error = ClientError(response, "GetItem")

    class Table:
        def get_item(self, **_: Any) -> Any:
            raise error

    class Resource:
        def Table(self, name: str) -> Table:
            return Table()

    return Resource


def test_throttled_storage_is_503_with_retry_after(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aws, "dynamodb", _raise_on_get_item("ProvisionedThroughputExceededException", 400))

    response = client.get(f"/users/{'a' * 32}")

    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json() == {"detail": "A storage service is unavailable; retry later."}


def test_other_aws_errors_stay_500_json(monkeypatch: pytest.MonkeyPatch) -> None:
    from functions.users.app import app

    monkeypatch.setattr(aws, "dynamodb", _raise_on_get_item("ValidationException", 400))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get(f"/users/{'a' * 32}")

    assert response.status_code == 500
    assert response.json()["detail"] == "Internal Server Error"


def test_health_and_docs(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "service": "users"}
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) >= {"/users", "/users/{user_id}", "/health"}
    assert set(paths["/users"]["post"]["responses"]) >= {"201", "409", "413", "422"}
