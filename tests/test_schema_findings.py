"""What a schemathesis run over real HTTP found: the answers now match the schemas."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from functions.items.app import app as items_app
from functions.notifications.app import app as notifications_app
from functions.users.app import app as users_app
from shared.validation import SingleLine
from tests.support.aws_resources import AwsState

ITEM = "0" * 32


def test_test_domain_addresses_are_valid_as_format_email_says(
    notifications_client: TestClient, notification_log: Path, state: AwsState
) -> None:
    assert notifications_client.post("/send-notification/jane@example.test").status_code == 200
    assert notification_log.read_text() == "notification for jane@example.test: some notification\n"
    with TestClient(users_app) as client:
        response = client.post("/users", json={"name": "Jane", "email": "jane@mail.example.test"})
    assert response.status_code == 201
    assert response.json()["email"] == "jane@mail.example.test"


@pytest.mark.parametrize("value", [0, 1, "true", "no"])
def test_run_async_is_a_boolean_not_anything_that_converts_to_one(
    notifications_client: TestClient, value: object
) -> None:
    response = notifications_client.post("/process", json={"data": {}, "run_async": value})
    assert response.status_code == 422


def test_a_body_that_cannot_be_read_is_a_documented_400(notifications_client: TestClient) -> None:
    response = notifications_client.post(
        "/process", content=b'{"data": {"k": "\xff"}}', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert "400" in notifications_app.openapi()["paths"]["/process"]["post"]["responses"]


def test_delete_on_the_search_is_405_not_a_422_about_an_item_id() -> None:
    with TestClient(items_app) as client:
        response = client.delete("/items/search")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET"
        assert client.get("/items/not-an-id").status_code == 422, "a malformed id is still a 422"


@pytest.mark.parametrize("method", ["OPTIONS", "PUT", "PATCH"])
def test_allow_lists_every_method_of_the_path(method: str) -> None:
    with TestClient(items_app) as client:
        response = client.request(method, f"/items/{ITEM}")
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET"
    assert response.json() == {"detail": "Method Not Allowed"}


def test_the_schema_says_which_characters_a_text_field_refuses() -> None:
    name = users_app.openapi()["components"]["schemas"]["Registration"]["properties"]["name"]
    assert name["pattern"] == SingleLine.pattern
    with pytest.raises(ValueError, match=r"U\+202E"):
        SingleLine.check("evil\u202etxt.exe")
    assert SingleLine.check("Zoë \U0001f600") == "Zoë \U0001f600"
