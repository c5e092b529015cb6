"""functions/items against moto: the item, its search rows, the notification and the audit record."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared.tasks import search
from tests.support.aws_resources import AwsState
from tests.support.logs import LogCapture

MUG = {"name": "Blue ceramic mug", "description": "Holds 350 ml.\nDishwasher safe.", "tags": ["kitchen"]}


pytestmark = pytest.mark.usefixtures("state")  # moto's mock_aws with the template's resources (conftest)


@pytest.fixture
def client() -> Iterator[TestClient]:
    from functions.items.app import app

    with TestClient(app) as test_client:
        yield test_client


def create(client: TestClient, **fields: Any) -> dict[str, Any]:
    response = client.post("/items", json={**MUG, **fields})
    assert response.status_code == 201, response.text
    item: dict[str, Any] = response.json()
    return item


def find(client: TestClient, q: str, **params: Any) -> list[dict[str, str]]:
    response = client.get("/items/search", params={"q": q, **params})
    assert response.status_code == 200, response.text
    assert response.json()["query"] == q
    results: list[dict[str, str]] = response.json()["results"]
    return results


def search_rows(state: AwsState, item_id: str) -> list[dict[str, Any]]:
    return [row for row in state.items(state.settings.search_table) if row.get("item_id") == item_id]


def test_create_stores_the_item(client: TestClient, state: AwsState) -> None:
    response = client.post("/items", json=MUG)

    assert response.status_code == 201
    item = response.json()
    assert {key: item[key] for key in MUG} == MUG
    assert response.headers["location"] == f"http://testserver/items/{item['id']}"
    assert state.item(state.settings.items_table, id=item["id"]) == item


def test_create_indexes_every_word_of_the_item(client: TestClient, state: AwsState) -> None:
    item = create(client)

    rows = search_rows(state, item["id"])
    words = {"blue", "ceramic", "mug", "kitchen", "holds", "350", "ml", "dishwasher", "safe"}
    assert {row["sk"] for row in rows} == {f"{word}#{item['id']}" for word in words}
    assert all(row["pk"] == "term#" + row["sk"][:2] and row["name"] == MUG["name"] for row in rows)
    doc = state.item(state.settings.search_table, pk=f"item#{item['id']}", sk="terms")
    assert doc is not None and set(doc["terms"]) == {row["sk"] for row in rows}


def test_create_sends_the_notification_and_the_audit_record(client: TestClient, state: AwsState) -> None:
    response = client.post("/items", json=MUG)
    item = response.json()

    [message] = state.sent_emails()
    assert message.destinations["ToAddresses"] == [state.settings.items_notify_to]
    assert message.subject == f"New item: {MUG['name']}"
    assert item["id"] in message.body
    [record] = state.items(state.settings.audit_table)
    assert (record["subject"], record["action"]) == (f"item#{item['id']}", "item.created")
    assert record["request_id"] == response.headers["x-request-id"]


def test_create_logs_the_three_tasks_in_order(client: TestClient, logs: LogCapture) -> None:
    client.post("/items", json=MUG)

    ran = [event["task"] for event in logs.named("task.succeeded")]
    assert ran == ["search.index_item", "email.send_item_created", "audit.record"]


def test_search_answers_from_the_index(client: TestClient) -> None:
    mug = create(client)
    create(client, name="Red teapot", description="Cast iron.", tags=["kitchen", "tea"])

    assert find(client, "ceramic") == [{"id": mug["id"], "name": mug["name"]}]


def test_search_matches_word_prefixes_case_and_accents_insensitively(client: TestClient) -> None:
    cafe = create(client, name="Café crème spoon", description="", tags=[])

    for query in ("cafe", "CAF", "crem", "Crème", "spo"):
        assert find(client, query) == [{"id": cafe["id"], "name": cafe["name"]}], query


def test_search_requires_every_word(client: TestClient) -> None:
    mug = create(client)
    create(client, name="Blue teapot", description="", tags=[])

    assert find(client, "blue mug") == [{"id": mug["id"], "name": mug["name"]}]
    assert find(client, "blue ceramic teapot") == []


def test_search_sorts_by_name_and_honours_limit(client: TestClient) -> None:
    names = ["Mug C", "mug a", "Mug B"]
    for name in names:
        create(client, name=name, description="", tags=[])

    assert [hit["name"] for hit in find(client, "mug")] == ["mug a", "Mug B", "Mug C"]
    assert [hit["name"] for hit in find(client, "mug", limit=2)] == ["mug a", "Mug B"]


def test_search_finds_tags_and_description_words(client: TestClient) -> None:
    mug = create(client)

    assert [hit["id"] for hit in find(client, "kitchen")] == [mug["id"]]
    assert [hit["id"] for hit in find(client, "dishwasher")] == [mug["id"]]


@pytest.mark.parametrize("query", ["nothing", "!!!", "a", "zz"])
def test_search_without_match_is_an_empty_list(client: TestClient, query: str) -> None:
    create(client)

    assert find(client, query) == []


def test_get_item(client: TestClient) -> None:
    item = create(client)

    response = client.get(f"/items/{item['id']}")

    assert response.status_code == 200
    assert response.json() == item


def test_unknown_item_is_404_json(client: TestClient) -> None:
    response = client.get(f"/items/{'b' * 32}")

    assert response.status_code == 404
    assert response.json() == {"detail": f"Item {'b' * 32} not found."}


def test_delete_removes_the_item_and_its_search_rows(client: TestClient, state: AwsState) -> None:
    item = create(client)
    other = create(client, name="Blue bowl", description="", tags=[])

    response = client.delete(f"/items/{item['id']}")

    assert response.status_code == 204
    assert state.item(state.settings.items_table, id=item["id"]) is None
    assert search_rows(state, item["id"]) == []
    assert state.item(state.settings.search_table, pk=f"item#{item['id']}", sk="terms") is None
    assert find(client, "blue") == [{"id": other["id"], "name": other["name"]}]
    actions = [record["action"] for record in state.items(state.settings.audit_table)]
    assert sorted(actions) == ["item.created", "item.created", "item.deleted"]


def test_delete_unknown_item_is_404_and_writes_nothing(client: TestClient, state: AwsState) -> None:
    create(client)
    before = state.snapshot()

    response = client.delete(f"/items/{'c' * 32}")

    assert response.status_code == 404
    assert response.json() == {"detail": f"Item {'c' * 32} not found."}
    assert state.snapshot() == before


def test_reindexing_is_idempotent(client: TestClient, state: AwsState) -> None:
    item = create(client)
    before = state.snapshot()

    search.index_item(item["id"])

    assert state.snapshot() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"description": "x"}, "name"),
        ({**MUG, "name": ""}, "name"),
        ({**MUG, "name": " \t "}, "name"),
        ({**MUG, "name": "x" * 201}, "name"),
        ({**MUG, "name": "mug\r\nX-Injected: 1"}, "name"),
        ({**MUG, "description": "x" * 2001}, "description"),
        ({**MUG, "description": "bell\x07"}, "description"),
        ({**MUG, "tags": [f"t{i}" for i in range(11)]}, "tags"),
        ({**MUG, "tags": ["x" * 33]}, 0),
        ({**MUG, "tags": [""]}, 0),
        ({**MUG, "tags": "kitchen"}, "tags"),
        ({**MUG, "price": 3}, "price"),
        ({**MUG, "id": "f" * 32}, "id"),
    ],
)
def test_bad_item_is_422_and_writes_nothing(
    client: TestClient, state: AwsState, body: dict[str, Any], field: str | int
) -> None:
    before = state.snapshot()

    response = client.post("/items", json=body)

    assert response.status_code == 422
    assert field in {error["loc"][-1] for error in response.json()["detail"]}
    assert state.snapshot() == before


def test_oversized_body_is_413_and_writes_nothing(client: TestClient, state: AwsState) -> None:
    before = state.snapshot()
    body = json.dumps({**MUG, "description": "x" * 70_000})

    response = client.post("/items", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 413
    assert response.json() == {"detail": "Request body is larger than the limit of 65536 bytes."}
    assert state.snapshot() == before


@pytest.mark.parametrize(
    "params", [{}, {"q": ""}, {"q": "x" * 201}, {"q": "mug", "limit": 0}, {"q": "mug", "limit": 101}]
)
def test_bad_search_is_422(client: TestClient, params: dict[str, Any]) -> None:
    response = client.get("/items/search", params=params)

    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


@pytest.mark.parametrize("item_id", ["search1", "Z" * 32, "1" * 31])
def test_malformed_item_id_is_422(client: TestClient, item_id: str) -> None:
    assert client.get(f"/items/{item_id}").status_code == 422
    assert client.delete(f"/items/{item_id}").status_code == 422


def test_health_and_docs(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "service": "items"}
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) >= {"/items", "/items/search", "/items/{item_id}", "/health"}
