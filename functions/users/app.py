"""Users: register once per e-mail address; a welcome e-mail and an audit record follow."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import BackgroundTasks, HTTPException, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared import aws
from shared.app import create_app
from shared.http_errors import error_responses
from shared.ids import new_id
from shared.lambda_handler import make_handler
from shared.settings import get_settings
from shared.tasks import audit
from shared.tasks.email import send_welcome_email
from shared.validation import Email, ResourceId, SingleLine

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

app = create_app(
    "users",
    description="Registration with a welcome e-mail (SES) and an audit record, sent after the response.",
    max_body_bytes=16 * 1024,
    calls_aws=True,
)

PersonName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), SingleLine]


class Registration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: PersonName = Field(examples=["Jane Doe"])
    email: Email = Field(max_length=254, examples=["jane@example.com"])


class User(BaseModel):
    id: str
    name: str
    email: str
    created_at: str


def email_claim_key(email: str) -> str:
    """The users-table key that reserves an address; case-insensitive, one per address."""
    return f"email#{email.casefold()}"


def _is_email_taken(exc: ClientError) -> bool:
    if exc.response["Error"]["Code"] != "TransactionCanceledException":
        return False
    reasons: list[dict[str, Any]] = exc.response.get("CancellationReasons", [])  # type: ignore[assignment]
    return bool(reasons) and reasons[0].get("Code") == "ConditionalCheckFailed"


@app.post("/users", status_code=status.HTTP_201_CREATED, responses=error_responses(400, 409, 413, 503))
def register(body: Registration, request: Request, response: Response, background_tasks: BackgroundTasks) -> User:
    """Register a user. The address is reserved and the user stored in one DynamoDB
    transaction, each put conditional on its key being new: of two concurrent
    registrations of one address exactly one succeeds, the other gets 409."""
    user = User(id=new_id(), name=body.name, email=body.email, created_at=audit.utc_now())
    table_name = get_settings().users_table
    client: Any = aws.dynamodb().meta.client
    from botocore.exceptions import ClientError  # loaded with the client

    try:
        client.transact_write_items(
            TransactItems=[
                {
                    "Put": {
                        "TableName": table_name,
                        "Item": {"id": email_claim_key(user.email), "user_id": user.id},
                        "ConditionExpression": "attribute_not_exists(id)",
                    }
                },
                {
                    "Put": {
                        "TableName": table_name,
                        "Item": user.model_dump(),
                        "ConditionExpression": "attribute_not_exists(id)",
                    }
                },
            ]
        )
    except ClientError as exc:
        if _is_email_taken(exc):
            raise HTTPException(
                status.HTTP_409_CONFLICT, "A user with this e-mail address is already registered."
            ) from exc
        raise
    response.headers["Location"] = str(request.url_for("get_user", user_id=user.id))
    background_tasks.add_task(send_welcome_email, user.email, user.name)
    background_tasks.add_task(audit.record, "user.registered", f"user#{user.id}", {"name": user.name}, **audit.stamp())
    return user


@app.get("/users/{user_id}", responses=error_responses(404, 503))
def get_user(user_id: ResourceId) -> User:
    item = aws.dynamodb().Table(get_settings().users_table).get_item(Key={"id": user_id}).get("Item")
    if item is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"User {user_id} not found.")
    return User.model_validate(item)


handler = make_handler(app)
