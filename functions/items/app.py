"""Items: a catalogue whose search index and notifications are updated after each write."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import BackgroundTasks, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.convertors import StringConvertor, register_url_convertor

from shared import aws
from shared.app import create_app
from shared.http_errors import error_responses
from shared.ids import new_id
from shared.lambda_handler import make_handler
from shared.settings import get_settings
from shared.tasks import audit, search
from shared.tasks.email import send_item_created
from shared.validation import MultiLine, ResourceId, SingleLine

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import Table


class _AnythingButSearch(StringConvertor):
    """``/items/search`` is the search, never an item: DELETE there is a 405, not a 422 about the id."""

    regex = "(?!search$)[^/]+"


register_url_convertor("not_search", _AnythingButSearch())

app = create_app(
    "items",
    description="A catalogue with a DynamoDB search index, updated in the background after each write.",
    max_body_bytes=64 * 1024,
    calls_aws=True,
)

ItemName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), SingleLine]
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32), SingleLine]
Description = Annotated[str, StringConstraints(max_length=2000), MultiLine]


class NewItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ItemName = Field(examples=["Blue ceramic mug"])
    description: Description = Field("", examples=["Holds 350 ml; dishwasher safe."])
    tags: list[Tag] = Field(default_factory=list, max_length=10, examples=[["kitchen", "ceramic"]])


class Item(BaseModel):
    id: str
    name: str
    description: str
    tags: list[str]
    created_at: str


class SearchHit(BaseModel):
    id: str
    name: str


class SearchResults(BaseModel):
    query: str
    results: list[SearchHit]


def _table() -> Table:
    return aws.dynamodb().Table(get_settings().items_table)


@app.post("/items", status_code=status.HTTP_201_CREATED, responses=error_responses(400, 413, 503))
def create_item(body: NewItem, request: Request, response: Response, background_tasks: BackgroundTasks) -> Item:
    """Store an item; the search index, a notification e-mail and the audit record follow."""
    item = Item(id=new_id(), created_at=audit.utc_now(), **body.model_dump())
    _table().put_item(Item=item.model_dump(), ConditionExpression="attribute_not_exists(id)")
    response.headers["Location"] = str(request.url_for("get_item", item_id=item.id))
    background_tasks.add_task(search.index_item, item.id)
    background_tasks.add_task(send_item_created, item.id, item.name)
    background_tasks.add_task(audit.record, "item.created", f"item#{item.id}", {"name": item.name}, **audit.stamp())
    return item


@app.get("/items/search", responses=error_responses(503))
def search_items(
    q: Annotated[str, Query(min_length=1, max_length=200, description="Words; each must start a word of the item.")],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> SearchResults:
    """Answered from the search index alone, so an item shows up once its indexing task ran."""
    return SearchResults(query=q, results=[SearchHit(**hit) for hit in search.search(q, limit)])


@app.get("/items/{item_id:not_search}", responses=error_responses(404, 503))
def get_item(item_id: ResourceId) -> Item:
    found = _table().get_item(Key={"id": item_id}).get("Item")
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"Item {item_id} not found.")
    return Item.model_validate(found)


@app.delete("/items/{item_id:not_search}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404, 503))
def delete_item(item_id: ResourceId, background_tasks: BackgroundTasks) -> Response:
    """Delete an item; its search rows are removed in the background."""
    from botocore.exceptions import ClientError  # loaded with the client, not at cold start

    try:
        _table().delete_item(Key={"id": item_id}, ConditionExpression="attribute_exists(id)")
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"Item {item_id} not found.") from exc
        raise
    background_tasks.add_task(search.index_item, item_id)
    background_tasks.add_task(audit.record, "item.deleted", f"item#{item_id}", **audit.stamp())
    return Response(status_code=status.HTTP_204_NO_CONTENT)


handler = make_handler(app)
