"""The shared task modules on their own, against moto: e-mail, audit, files, search."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import structlog
from botocore.exceptions import ClientError
from PIL import Image

from infra.local_resources import create_resources
from shared import aws
from shared.background.registry import lookup
from shared.background.runner import run_task
from shared.background.task import QueuedTask
from shared.settings import get_settings
from shared.tasks import audit, email, files, search
from tests.support.aws_resources import AwsState
from tests.support.logs import LogCapture

MiB = 1024 * 1024


pytestmark = pytest.mark.usefixtures("state")  # moto's mock_aws with the template's resources (conftest)


def png(size: tuple[int, int] = (300, 200), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (10, 20, 30, 128) if mode == "RGBA" else "blue").save(buffer, "PNG")
    return buffer.getvalue()


def put(state: AwsState, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
    aws.s3().put_object(Bucket=state.bucket, Key=key, Body=data, ContentType=content_type)


# --- registry ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "func"),
    [
        ("email.send_welcome", email.send_welcome_email),
        ("email.send_item_created", email.send_item_created),
        ("audit.record", audit.record),
        ("files.process_upload", files.process_upload),
        ("search.index_item", search.index_item),
    ],
)
def test_every_task_is_registered_under_its_stable_name(name: str, func: object) -> None:
    assert lookup(name) is func


# --- e-mail ------------------------------------------------------------------------


def test_deliver_sends_through_ses(state: AwsState, logs: LogCapture) -> None:
    message_id = email.deliver("ann@example.org", "Hi", "Body text\nline two")

    [message] = state.sent_emails()
    assert message.id == message_id
    assert message.source == state.settings.mail_sender
    assert message.destinations["ToAddresses"] == ["ann@example.org"]
    assert (message.subject, message.body) == ("Hi", "Body text\nline two")
    [sent] = logs.named("email.sent")
    assert sent["to"] == "a***@example.org" and sent["message_id"] == message_id
    assert "ann@example.org" not in logs.stream.getvalue()


def test_welcome_email_greets_by_name(state: AwsState) -> None:
    email.send_welcome_email("bo@example.com", "Bo")

    [message] = state.sent_emails()
    assert message.destinations["ToAddresses"] == ["bo@example.com"]
    assert message.subject == "Welcome aboard" and message.body.startswith("Hello Bo,")


def test_item_notification_goes_to_the_configured_address(state: AwsState, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ITEMS_NOTIFY_TO", "buyers@example.com")
    get_settings.cache_clear()

    email.send_item_created("abc", "Kettle")

    [message] = state.sent_emails()
    assert message.destinations["ToAddresses"] == ["buyers@example.com"]
    assert message.subject == "New item: Kettle" and "abc" in message.body


def test_log_backend_writes_the_notification_log(
    state: AwsState, monkeypatch: pytest.MonkeyPatch, notification_log: Path
) -> None:
    monkeypatch.setenv("MAIL_BACKEND", "log")
    get_settings.cache_clear()

    message_id = email.deliver("ann@example.org", "Hi", "Body text\nline two")

    assert message_id.startswith("log-")
    assert notification_log.read_text() == "email to ann@example.org: [Hi] Body text line two\n"
    assert state.sent_emails() == []


def test_unverified_sender_fails_loudly_without_logging_addresses(
    state: AwsState, monkeypatch: pytest.MonkeyPatch, logs: LogCapture
) -> None:
    monkeypatch.setenv("MAIL_SENDER", "stranger@example.net")
    get_settings.cache_clear()
    task = QueuedTask(
        func=email.send_welcome_email, args=("ann@example.org", "Ann"), kwargs={}, name="email.send_welcome"
    )

    assert asyncio.run(run_task(task, "inline")) == "failed"

    [failed] = logs.named("task.failed", task="email.send_welcome")
    assert failed["error_type"] == "EmailNotSent"
    assert failed["error"].startswith("SES MessageRejected: ") and "s***@example.net" in failed["error"]
    assert "stranger@example.net" not in logs.stream.getvalue()
    assert "ann@example.org" not in logs.stream.getvalue()
    assert state.sent_emails() == []


# --- audit -------------------------------------------------------------------------


def test_record_appends_one_item(state: AwsState) -> None:
    with structlog.contextvars.bound_contextvars(request_id="req-1", service="tests"):
        assert audit.record("thing.done", "thing#1", {"count": 2, "ratio": 0.5, "who": "x"}) is True

    [item] = state.items(state.settings.audit_table)
    assert item["subject"] == "thing#1" and item["action"] == "thing.done"
    assert item["details"] == {"count": 2, "ratio": Decimal("0.5"), "who": "x"}
    assert (item["request_id"], item["service"]) == ("req-1", "tests")
    assert item["event"] == f"{item['occurred_at']}#{item['event_id']}"


def test_the_same_event_twice_is_recorded_once(state: AwsState, logs: LogCapture) -> None:
    stamp = audit.stamp()

    assert audit.record("thing.done", "thing#1", **stamp) is True
    assert audit.record("thing.done", "thing#1", {"changed": True}, **stamp) is False

    [item] = state.items(state.settings.audit_table)
    assert item["details"] == {}
    assert len(logs.named("audit.duplicate", subject="thing#1")) == 1


def test_history_is_in_time_order(state: AwsState) -> None:
    for occurred_at, action in [
        ("2024-01-02T00:00:00Z", "b"),
        ("2024-01-01T00:00:00Z", "a"),
        ("2024-01-03T00:00:00Z", "c"),
    ]:
        audit.record(action, "thing#1", occurred_at=occurred_at)
    audit.record("other", "thing#2")

    assert [item["action"] for item in audit.history("thing#1")] == ["a", "b", "c"]


def test_stamp_takes_the_request_id_of_the_request() -> None:
    with structlog.contextvars.bound_contextvars(request_id="req-9"):
        stamp = audit.stamp()

    assert stamp["request_id"] == "req-9" and len(stamp["event_id"]) == 32 and stamp["occurred_at"].endswith("Z")


# --- files: sniffing and names -----------------------------------------------------


def _image(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (_image("PNG"), "image/png"),
        (_image("JPEG"), "image/jpeg"),
        (_image("GIF"), "image/gif"),
        (_image("WEBP"), "image/webp"),
        (b"%PDF-1.4\n", "application/pdf"),
        (b"hello world\n", "text/plain"),
        ("naïve café ".encode() * 10 + "é".encode()[:1], "text/plain"),
        (b"<html><body>", "text/html"),
        (b"\x00\x01\x02\x03\xff\xfe", "application/octet-stream"),
        (b"text with a \x00 NUL", "application/octet-stream"),
        (b"", "application/octet-stream"),
    ],
)
def test_sniff_reads_the_bytes_not_the_name(head: bytes, expected: str) -> None:
    assert files.sniff(head) == expected


@pytest.mark.parametrize(
    ("declared", "normalized"),
    [
        ("Image/JPG", "image/jpeg"),
        ("text/plain; charset=utf-8", "text/plain"),
        (None, ""),
        ("image/x-png", "image/png"),
    ],
)
def test_normalize_content_type(declared: str | None, normalized: str) -> None:
    assert files.normalize_content_type(declared) == normalized


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("photo.png", "photo.png"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system32\\cmd.exe", "cmd.exe"),
        ("/absolute/path.txt", "path.txt"),
        ("a\x00b\r\nc\t.txt", "abc.txt"),
        ("evil\u202etxt.exe", "eviltxt.exe"),
        ("Zoë's résumé (final).pdf", "Zoe_s_resume_final_.pdf"),
        ("...", "upload"),
        ("", "upload"),
        (None, "upload"),
        ("漢字.png", "png"),
        ("x" * 300 + ".jpeg", "x" * 95 + ".jpeg"),
    ],
)
def test_safe_filename(name: str | None, safe: str) -> None:
    result = files.safe_filename(name)

    assert result == safe
    assert len(result) <= files.MAX_FILENAME and "/" not in result and ".." not in result


# --- files: S3 ---------------------------------------------------------------------


def test_store_stream_small_file_is_one_put(state: AwsState) -> None:
    size = files.store_stream(
        io.BytesIO(b"abc"), state.bucket, "k/a.txt", max_bytes=10, content_type="text/plain", filename="a.txt"
    )

    assert size == 3
    stored = state.s3_object("k/a.txt")
    assert stored["Body"].read() == b"abc"
    assert (stored["ContentType"], stored["ContentDisposition"]) == ("text/plain", 'attachment; filename="a.txt"')


def test_store_stream_large_file_goes_in_parts(state: AwsState) -> None:
    data = bytes(range(256)) * (11 * MiB // 256)

    size = files.store_stream(
        io.BytesIO(data), state.bucket, "k/big", max_bytes=12 * MiB, content_type="text/plain", part_bytes=5 * MiB
    )

    assert size == len(data)
    assert state.s3_body("k/big") == data
    assert state.s3_object("k/big")["ETag"].endswith('-3"'), "three parts"
    assert state.multipart_uploads() == []


@pytest.mark.parametrize(("size", "max_bytes"), [(11, 10), (11 * MiB, 10 * MiB)])
def test_store_stream_over_the_limit_leaves_nothing(state: AwsState, size: int, max_bytes: int) -> None:
    with pytest.raises(files.UploadTooLarge, match=f"maximum size of {max_bytes} bytes"):
        files.store_stream(
            io.BytesIO(b"q" * size),
            state.bucket,
            "k/big",
            max_bytes=max_bytes,
            content_type="text/plain",
            part_bytes=5 * MiB,
        )

    assert state.s3_keys() == []
    assert state.multipart_uploads() == []


def test_describe_object_sniffs_instead_of_trusting_the_stored_type(state: AwsState) -> None:
    data = png()
    put(state, "k/lie.txt", data, content_type="text/plain")

    facts = files.describe_object(state.bucket, "k/lie.txt")

    assert facts == files.FileFacts(size=len(data), sha256=hashlib.sha256(data).hexdigest(), content_type="image/png")


def test_make_thumbnails_keeps_the_aspect_ratio(state: AwsState) -> None:
    put(state, "k/wide.png", png((300, 200)))

    keys = files.make_thumbnails(state.bucket, "k/wide.png", "t/", sizes=[100, 50])

    assert keys == ["t/50.webp", "t/100.webp"]
    sizes = [Image.open(io.BytesIO(state.s3_body(key))).size for key in keys]
    assert sizes == [(50, 33), (100, 67)]


def test_thumbnails_keep_transparency(state: AwsState) -> None:
    put(state, "k/alpha.png", png((40, 40), mode="RGBA"))

    [key] = files.make_thumbnails(state.bucket, "k/alpha.png", "t/", sizes=[20])

    with Image.open(io.BytesIO(state.s3_body(key))) as thumbnail:
        assert thumbnail.mode == "RGBA"
        pixel = thumbnail.getpixel((5, 5))
        assert isinstance(pixel, tuple) and pixel[3] == 128


def test_thumbnails_follow_the_exif_orientation(state: AwsState) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees
    buffer = io.BytesIO()
    Image.new("RGB", (200, 100), "green").save(buffer, "JPEG", exif=exif)
    put(state, "k/rotated.jpg", buffer.getvalue())

    [key] = files.make_thumbnails(state.bucket, "k/rotated.jpg", "t/", sizes=[100])

    assert Image.open(io.BytesIO(state.s3_body(key))).size == (50, 100)


def test_thumbnails_of_a_non_image_raise_processing_error(state: AwsState) -> None:
    put(state, "k/notes.txt", b"not an image")

    with pytest.raises(files.ProcessingError, match="not an image"):
        files.make_thumbnails(state.bucket, "k/notes.txt", "t/", sizes=[10])
    assert state.s3_keys("t/") == []


# --- files: the process_upload task --------------------------------------------------


def pending_upload(state: AwsState, upload_id: str, key: str, data: bytes | None) -> None:
    if data is not None:
        put(state, key, data)
    aws.dynamodb().Table(state.settings.uploads_table).put_item(
        Item={
            "id": upload_id,
            "status": "pending",
            "bucket": state.bucket,
            "key": key,
            "filename": key.rsplit("/", 1)[-1],
            "content_type": "image/png",
            "size": len(data or b""),
            "created_at": "2024-01-01T00:00:00Z",
        }
    )


def upload_record(state: AwsState, upload_id: str) -> dict[str, object]:
    record = state.item(state.settings.uploads_table, id=upload_id)
    assert record is not None
    return record


def test_process_upload_records_facts_and_thumbnails(state: AwsState) -> None:
    data = png((600, 300))
    pending_upload(state, "u1", "uploads/u1/a.png", data)

    files.process_upload("u1")

    record = upload_record(state, "u1")
    assert record["status"] == "processed"
    assert record["facts"] == {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "content_type": "image/png",
    }
    assert record["thumbnails"] == ["thumbnails/u1/128.webp", "thumbnails/u1/512.webp"]
    assert state.s3_keys("thumbnails/u1/") == ["thumbnails/u1/128.webp", "thumbnails/u1/512.webp"]


def test_process_upload_twice_gives_the_same_result(state: AwsState) -> None:
    pending_upload(state, "u1", "uploads/u1/a.png", png())
    files.process_upload("u1")
    first = {key: value for key, value in upload_record(state, "u1").items() if key != "updated_at"}

    files.process_upload("u1")

    assert {key: value for key, value in upload_record(state, "u1").items() if key != "updated_at"} == first


def test_process_upload_of_a_missing_object_marks_it_failed(state: AwsState) -> None:
    pending_upload(state, "u2", "uploads/u2/gone.png", None)

    with pytest.raises(ClientError):
        files.process_upload("u2")

    record = upload_record(state, "u2")
    assert (record["status"], record["reason"]) == ("failed", "Storage error: NoSuchKey.")


def test_process_upload_refuses_content_that_is_not_allowed(state: AwsState) -> None:
    pending_upload(state, "u3", "uploads/u3/x.png", b"<html>sneaky</html>")

    with pytest.raises(files.ProcessingError):
        files.process_upload("u3")

    assert upload_record(state, "u3")["reason"] == "Content type text/html is not allowed."


def test_process_upload_of_an_unknown_id_raises() -> None:
    with pytest.raises(LookupError, match="does not exist"):
        files.process_upload("nope")


def test_a_failing_upload_task_is_logged_by_the_task_layer(state: AwsState, logs: LogCapture) -> None:
    pending_upload(state, "u4", "uploads/u4/bad.png", png()[:100])
    task = QueuedTask(func=files.process_upload, args=("u4",), kwargs={}, name="files.process_upload")

    outcome = asyncio.run(run_task(task, "inline"))

    assert outcome == "failed_permanently"
    [failed] = logs.named("task.failed", task="files.process_upload")
    assert failed["error_type"] == "ProcessingError" and failed["exception"]
    assert upload_record(state, "u4")["status"] == "failed"


# --- search ------------------------------------------------------------------------


def put_item(state: AwsState, item_id: str, name: str, description: str = "", tags: list[str] | None = None) -> None:
    item = {"id": item_id, "name": name, "description": description, "tags": tags or [], "created_at": "x"}
    aws.dynamodb().Table(state.settings.items_table).put_item(Item=item)


def test_tokenize() -> None:
    assert search.tokenize("Crème BRÛLÉE, crème! a 42 x-ray") == ["creme", "brulee", "42", "ray"]
    assert search.tokenize("y" * 100) == ["y" * search.MAX_TERM]


def test_index_item_writes_term_rows_and_a_doc_row(state: AwsState) -> None:
    put_item(state, "i1", "Green tea", "Loose leaf", ["drinks"])

    assert search.index_item("i1") == 5

    rows = state.items(state.settings.search_table)
    assert {(row["pk"], row["sk"]) for row in rows if row["sk"] != "terms"} == {
        ("term#gr", "green#i1"),
        ("term#te", "tea#i1"),
        ("term#dr", "drinks#i1"),
        ("term#lo", "loose#i1"),
        ("term#le", "leaf#i1"),
    }
    doc = state.item(state.settings.search_table, pk="item#i1", sk="terms")
    assert doc is not None and len(doc["terms"]) == 5


def test_reindex_after_a_change_drops_stale_words(state: AwsState) -> None:
    put_item(state, "i1", "Green tea")
    search.index_item("i1")
    put_item(state, "i1", "Black tea")

    search.index_item("i1")

    assert search.search("green") == []
    assert search.search("black tea") == [{"id": "i1", "name": "Black tea"}]
    assert search.search("tea") == [{"id": "i1", "name": "Black tea"}]


def test_reindex_after_a_delete_removes_every_row(state: AwsState) -> None:
    put_item(state, "i1", "Green tea")
    search.index_item("i1")
    aws.dynamodb().Table(state.settings.items_table).delete_item(Key={"id": "i1"})

    assert search.index_item("i1") == 0

    assert state.items(state.settings.search_table) == []


def test_search_pages_through_many_matches(state: AwsState) -> None:
    for number in range(30):
        put_item(state, f"i{number:02}", f"Widget {number:02}", "x" * 300)
        search.index_item(f"i{number:02}")

    results = search.search("widget", limit=100)

    assert [hit["id"] for hit in results] == [f"i{number:02}" for number in range(30)]


# --- resources and cold start --------------------------------------------------------


def test_create_resources_is_safe_to_call_again(state: AwsState) -> None:
    aws.s3().put_object(Bucket=state.bucket, Key="keep", Body=b"1")

    created = create_resources()

    assert state.bucket in created["buckets"]
    assert set(state.tables()) <= set(created["tables"])
    assert state.s3_keys() == ["keep"]
    assert state.settings.mail_sender in aws.ses().list_identities()["Identities"]


def test_importing_a_function_creates_no_client_and_loads_no_image_library_nor_the_sdk() -> None:
    """Cold start: clients (boto3 and botocore with them) on first use; Pillow, puremagic and Powertools where used;
    never pydantic.v1, which FastAPI's check for v1 models would import (shared/pydantic_v1_check.py).

    Durable tasks routed to SQS, as template.yaml deploys the functions, so the sqs backend is imported too.
    """
    code = (
        "import json, sys\n"
        "import functions.users.app, functions.items.app, functions.uploads.app, functions.notifications.app\n"
        "from shared import aws\n"
        "print(json.dumps({'clients': aws.client.cache_info().currsize + aws.resource.cache_info().currsize,"
        " 'pil': 'PIL' in sys.modules, 'puremagic': 'puremagic' in sys.modules, 'boto3': 'boto3' in sys.modules,"
        " 'botocore': 'botocore' in sys.modules,"
        " 'pydantic_v1': 'pydantic.v1' in sys.modules,"
        " 'powertools': 'aws_lambda_powertools' in sys.modules,"
        " 'sqs_backend': 'shared.background.sqs' in sys.modules}))\n"
    )
    env = {
        **os.environ,
        "DURABLE_TASKS": "email.send_welcome,files.process_upload",
        "TASK_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/tasks",
    }
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1], env=env
    ).stdout

    assert json.loads(output.strip().splitlines()[-1]) == {
        "clients": 0,
        "pil": False,
        "puremagic": False,
        "boto3": False,
        "botocore": False,
        "pydantic_v1": False,
        "powertools": False,
        "sqs_backend": True,
    }
