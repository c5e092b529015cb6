"""Uploads: a file goes to S3 at once (202 Accepted); facts and thumbnails follow in the background."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import BackgroundTasks, File, HTTPException, Request, Response, UploadFile, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from shared import aws
from shared.app import create_app
from shared.http_errors import error_responses
from shared.ids import new_id
from shared.lambda_handler import make_handler
from shared.logs import get_logger
from shared.settings import get_settings
from shared.task_status import track
from shared.tasks import audit
from shared.tasks.files import (
    GENERIC_TYPES,
    SNIFF_BYTES,
    UploadTooLarge,
    normalize_content_type,
    process_upload,
    safe_filename,
    sniff,
    store_stream,
)
from shared.validation import ResourceId

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import Table

log = get_logger("functions.uploads")

MULTIPART_ENVELOPE_BYTES = 64 * 1024
"""Room for the multipart boundaries and part headers around the file itself."""


def body_limit() -> int:
    return get_settings().upload_max_bytes + MULTIPART_ENVELOPE_BYTES


app = create_app(
    "uploads",
    description="File uploads stored in S3 at once; size, SHA-256, real type and thumbnails follow.",
    max_body_bytes=body_limit,
    calls_aws=True,
    track_tasks=True,  # files.process_upload is tracked: GET /uploads/tasks/{task_id}
)


class UploadAccepted(BaseModel):
    id: str
    status: Literal["pending"]
    status_url: str
    """The upload: ``pending``, then ``processed`` (facts, thumbnails) or ``failed``."""
    task_url: str
    """Its processing task's status (docs/task-status.md): attempts, errors, the facts as its result."""


class UploadFacts(BaseModel):
    size: int
    sha256: str
    content_type: str


class Upload(BaseModel):
    id: str
    status: Literal["pending", "processed", "failed"]
    filename: str
    key: str
    content_type: str
    size: int
    created_at: str
    updated_at: str | None = None
    facts: UploadFacts | None = None
    thumbnails: list[str] = []
    reason: str | None = None


def _table() -> Table:
    return aws.dynamodb().Table(get_settings().uploads_table)


def _check_content_type(declared: str, sniffed: str, allowed: tuple[str, ...]) -> None:
    allowed_list = ", ".join(allowed)
    if declared not in GENERIC_TYPES and declared not in allowed:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"Content type {declared} is not allowed (allowed: {allowed_list})."
        )
    if sniffed not in allowed:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"The file's content is {sniffed}, which is not allowed (allowed: {allowed_list}).",
        )
    if declared not in GENERIC_TYPES and declared != sniffed:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"The file was sent as {declared} but its content is {sniffed}."
        )


@app.post(
    "/uploads",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(400, 413, 415, 503),
)
def create_upload(
    file: Annotated[UploadFile, File(json_schema_extra={"minLength": 1})],  # an empty file is a 422
    request: Request,
    response: Response,
    background_tasks: BackgroundTasks,
) -> UploadAccepted:
    """Store the file in S3 and answer 202 with the URL of its status and of its processing task's.

    The request body is cut off at ``UPLOAD_MAX_BYTES`` plus the multipart envelope
    while it arrives, and the file itself is counted again while it streams to S3
    (a multipart upload past the limit is aborted): 413 either way, nothing stored.
    The type is sniffed from the bytes; the client's part header must agree with it.
    """
    settings = get_settings()
    stream = file.file
    head = stream.read(SNIFF_BYTES)
    if not head:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", "file"), "msg": "The file is empty.", "input": None}]
        )
    content_type = sniff(head)
    _check_content_type(normalize_content_type(file.content_type), content_type, settings.upload_allowed_types)
    stream.seek(0)

    upload_id = new_id()
    filename = safe_filename(file.filename)
    key = f"uploads/{upload_id}/{filename}"
    try:
        size = store_stream(
            stream,
            settings.uploads_bucket,
            key,
            max_bytes=settings.upload_max_bytes,
            content_type=content_type,
            filename=filename,
        )
    except UploadTooLarge as exc:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from exc

    record: dict[str, Any] = {
        "id": upload_id,
        "status": "pending",
        "bucket": settings.uploads_bucket,
        "key": key,
        "filename": filename,
        "content_type": content_type,
        "declared_content_type": normalize_content_type(file.content_type),
        "size": size,
        "created_at": audit.utc_now(),
    }
    try:
        _table().put_item(Item=record, ConditionExpression="attribute_not_exists(id)")
    except Exception:
        # No record means nobody could ever find this object: don't keep it.
        try:
            aws.s3().delete_object(Bucket=settings.uploads_bucket, Key=key)
        except Exception as cleanup_error:
            log.error("upload.orphaned", upload_id=upload_id, key=key, error=str(cleanup_error))
        raise

    status_url = str(request.url_for("get_upload", upload_id=upload_id))
    response.headers["Location"] = status_url
    task_url = track(request, background_tasks, process_upload, upload_id)
    background_tasks.add_task(
        audit.record,
        "upload.received",
        f"upload#{upload_id}",
        {"filename": filename, "size": size, "content_type": content_type},
        **audit.stamp(),
    )
    log.info("upload.stored", upload_id=upload_id, size=size, content_type=content_type)
    return UploadAccepted(id=upload_id, status="pending", status_url=status_url, task_url=task_url)


@app.get("/uploads/{upload_id}", responses=error_responses(404, 503))
def get_upload(upload_id: ResourceId) -> Upload:
    """``pending`` until processed; then ``processed`` with the facts and thumbnails, or ``failed`` with the reason."""
    item = _table().get_item(Key={"id": upload_id}).get("Item")
    if item is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"Upload {upload_id} not found.")
    return Upload.model_validate(item)


handler = make_handler(app)
