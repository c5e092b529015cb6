"""functions/uploads against moto: the object, its record, facts and thumbnails really exist."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError
from fastapi.testclient import TestClient
from PIL import Image

from infra.servers import eventually, start_function
from shared.settings import get_settings
from tests.support.aws_resources import AwsState
from tests.support.logs import LogCapture

MiB = 1024 * 1024
ENVELOPE = 64 * 1024


pytestmark = pytest.mark.usefixtures("state")  # moto's mock_aws with the template's resources (conftest)


@pytest.fixture
def client() -> Iterator[TestClient]:
    from functions.uploads.app import app

    with TestClient(app) as test_client:
        yield test_client


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (800, 600), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, "red").save(buffer, fmt)
    return buffer.getvalue()


def upload(client: TestClient, data: bytes, content_type: str | None = "image/png", name: str = "pic.png") -> Any:
    part: tuple[str, bytes] | tuple[str, bytes, str] = (
        (name, data) if content_type is None else (name, data, content_type)
    )
    return client.post("/uploads", files={"file": part})


def set_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


def test_upload_is_accepted_and_stored_at_once(client: TestClient, state: AwsState) -> None:
    data = image_bytes()

    response = upload(client, data)

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending" and len(body["id"]) == 32
    assert body["status_url"] == f"http://testserver/uploads/{body['id']}"
    assert response.headers["location"] == body["status_url"]
    key = f"uploads/{body['id']}/pic.png"
    stored = state.s3_object(key)
    assert stored["Body"].read() == data
    assert stored["ContentType"] == "image/png"
    assert stored["ContentDisposition"] == 'attachment; filename="pic.png"'


def test_status_is_pending_until_the_task_ran(
    client: TestClient, state: AwsState, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functions.uploads.app as uploads_app

    postponed: list[str] = []
    monkeypatch.setattr(uploads_app, "process_upload", postponed.append)
    upload_id = upload(client, image_bytes()).json()["id"]

    status = client.get(f"/uploads/{upload_id}").json()

    assert postponed == [upload_id]
    assert status["status"] == "pending"
    assert status["facts"] is None and status["thumbnails"] == [] and status["reason"] is None
    assert state.s3_keys("thumbnails/") == []


def test_image_gets_facts_and_webp_thumbnails(client: TestClient, state: AwsState) -> None:
    data = image_bytes(size=(800, 600))

    upload_id = upload(client, data).json()["id"]
    status = client.get(f"/uploads/{upload_id}").json()

    assert status["status"] == "processed"
    assert status["facts"] == {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "content_type": "image/png",
    }
    assert status["thumbnails"] == [f"thumbnails/{upload_id}/128.webp", f"thumbnails/{upload_id}/512.webp"]
    for key, longest in zip(status["thumbnails"], (128, 512), strict=True):
        stored = state.s3_object(key)
        assert stored["ContentType"] == "image/webp"
        with Image.open(io.BytesIO(stored["Body"].read())) as thumbnail:
            assert thumbnail.format == "WEBP"
            assert thumbnail.size == (longest, longest * 3 // 4)


def test_the_processing_task_is_followed_at_its_task_url_to_its_facts(client: TestClient, state: AwsState) -> None:
    """The shared task status (docs/task-status.md): the URL in the body is the response's Link too."""
    data = image_bytes()
    response = upload(client, data)
    body = response.json()

    assert re.fullmatch(r"http://testserver/tasks/[0-9a-f]{32}", body["task_url"])
    assert response.headers["link"] == f'<{body["task_url"]}>; rel="monitor"'
    task = eventually(lambda: (r := client.get(body["task_url"]).json())["done"] and r)
    assert task["task"] == "files.process_upload"
    assert task["state"] == "succeeded" and task["done"] is True
    assert task["result"] == {
        "upload_id": body["id"],
        "size": len(data),
        "content_type": "image/png",
        "thumbnails": [f"thumbnails/{body['id']}/128.webp", f"thumbnails/{body['id']}/512.webp"],
    }
    assert client.get(body["status_url"]).json()["status"] == "processed", "the upload's own status, as before"


def test_upload_appends_an_audit_record(client: TestClient, state: AwsState) -> None:
    data = image_bytes()
    response = upload(client, data)

    [record] = state.items(state.settings.audit_table)
    assert record["subject"] == f"upload#{response.json()['id']}"
    assert record["action"] == "upload.received"
    assert record["details"] == {"filename": "pic.png", "size": len(data), "content_type": "image/png"}


@pytest.mark.parametrize(
    ("data", "content_type", "name", "sniffed"),
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "application/pdf", "doc.pdf", "application/pdf"),
        ("Grüße, plain text\n".encode(), "text/plain", "notes.txt", "text/plain"),
        (image_bytes("JPEG"), "image/jpg", "photo.jpg", "image/jpeg"),
    ],
)
def test_other_allowed_types_are_processed_with_their_real_type(
    client: TestClient, state: AwsState, data: bytes, content_type: str, name: str, sniffed: str
) -> None:
    upload_id = upload(client, data, content_type, name).json()["id"]

    status = client.get(f"/uploads/{upload_id}").json()

    assert status["status"] == "processed"
    assert status["facts"]["content_type"] == sniffed
    assert status["facts"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert state.s3_object(f"uploads/{upload_id}/{name}")["ContentType"] == sniffed
    assert (status["thumbnails"] != []) == sniffed.startswith("image/")


@pytest.mark.parametrize("declared", [None, "application/octet-stream"])
def test_generic_declared_type_is_replaced_by_the_sniffed_one(
    client: TestClient, state: AwsState, declared: str | None
) -> None:
    upload_id = upload(client, image_bytes("GIF"), declared, "anim.gif").json()["id"]

    assert state.s3_object(f"uploads/{upload_id}/anim.gif")["ContentType"] == "image/gif"
    assert client.get(f"/uploads/{upload_id}").json()["content_type"] == "image/gif"


@pytest.mark.parametrize(
    ("name", "key_name"),
    [
        ("../../etc/passwd.txt", "passwd.txt"),
        ("C:\\Users\\me\\..\\secret.txt", "secret.txt"),
        ("résumé final.txt", "resume_final.txt"),
        ("..", "upload"),
        (".hidden.txt", "hidden.txt"),
        ("a\x7fb\u202e.txt", "ab.txt"),
    ],
)
def test_file_names_are_sanitized_before_they_become_keys(
    client: TestClient, state: AwsState, name: str, key_name: str
) -> None:
    response = upload(client, b"just text\n", "text/plain", name)

    upload_id = response.json()["id"]
    assert state.s3_keys("uploads/") == [f"uploads/{upload_id}/{key_name}"]
    assert client.get(f"/uploads/{upload_id}").json()["filename"] == key_name


def test_undecodable_image_marks_the_upload_failed(client: TestClient, state: AwsState, logs: LogCapture) -> None:
    broken = image_bytes()[:200]

    upload_id = upload(client, broken).json()["id"]
    status = client.get(f"/uploads/{upload_id}").json()

    assert status["status"] == "failed"
    assert status["reason"].startswith("The image could not be decoded")
    assert status["facts"] is None and status["thumbnails"] == []
    [failed] = logs.named("task.failed", task="files.process_upload")
    assert failed["error_type"] == "ProcessingError"
    assert failed["permanent"] is True, "a bad file is not retried (nor dead-lettered) by the worker"
    assert logs.named("task.succeeded", task="audit.record"), "the next task still ran"
    assert state.s3_keys("thumbnails/") == []


def test_too_many_pixels_marks_the_upload_failed(
    client: TestClient, state: AwsState, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_env(monkeypatch, THUMBNAIL_MAX_PIXELS="10000")

    upload_id = upload(client, image_bytes(size=(200, 100))).json()["id"]

    status = client.get(f"/uploads/{upload_id}").json()
    assert status["status"] == "failed"
    assert status["reason"] == "Image is 200x100 pixels, more than the 10000 allowed."


@pytest.mark.parametrize(
    ("env", "mode", "refused"),
    [
        ({"IMAGE_MEMORY_BUDGET_MB": "1"}, "RGBA", True),  # 8 bytes a pixel: 131072 pixels fit 1 MiB
        ({"IMAGE_MEMORY_BUDGET_MB": "1"}, "RGB", False),  # 4 bytes a pixel: 262144 pixels fit
        ({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2"}, "RGBA", True),  # half of Lambda's MemorySize
        ({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "4"}, "RGBA", False),
    ],
)
def test_images_must_fit_the_memory_budget_of_the_function(
    client: TestClient, state: AwsState, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], mode: str, refused: bool
) -> None:
    set_env(monkeypatch, **env)

    upload_id = upload(client, image_bytes(size=(400, 400), mode=mode)).json()["id"]

    status = client.get(f"/uploads/{upload_id}").json()
    if refused:
        assert status["status"] == "failed"
        assert status["reason"] == "Image is 400x400 pixels, more than the 131072 allowed."
    else:
        assert status["status"] == "processed"


@pytest.mark.parametrize(
    ("data", "content_type", "detail"),
    [
        (b"<html><script>alert(1)</script>", "text/html", "Content type text/html is not allowed"),
        (b"<html><script>alert(1)</script>", "text/plain", "The file's content is text/html"),
        (b"PK\x03\x04" + b"\x00" * 40, None, "The file's content is application/"),
        (b"\x00\x01\x02\x03binary", "application/octet-stream", "application/octet-stream, which is not allowed"),
        (b"plain text pretending\n", "image/png", "The file was sent as image/png but its content is text/plain"),
        (image_bytes("JPEG"), "image/png", "The file was sent as image/png but its content is image/jpeg"),
    ],
)
def test_disallowed_or_mismatched_content_is_415_and_writes_nothing(
    client: TestClient, state: AwsState, data: bytes, content_type: str | None, detail: str
) -> None:
    before = state.snapshot()

    response = upload(client, data, content_type, "file.bin")

    assert response.status_code == 415
    assert detail in response.json()["detail"]
    assert state.snapshot() == before


def test_empty_file_is_422_and_writes_nothing(client: TestClient, state: AwsState) -> None:
    before = state.snapshot()

    response = upload(client, b"", "text/plain", "empty.txt")

    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == "The file is empty."
    assert state.snapshot() == before


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"files": {"other": ("a.txt", b"text", "text/plain")}},
        {"data": {"file": "not a file"}},
        {"json": {"file": "x"}},
    ],
)
def test_request_without_a_file_part_is_422_and_writes_nothing(
    client: TestClient, state: AwsState, request_kwargs: dict[str, Any]
) -> None:
    before = state.snapshot()

    response = client.post("/uploads", **request_kwargs)

    assert response.status_code == 422
    assert state.snapshot() == before


def test_file_one_byte_over_the_limit_is_413_and_writes_nothing(
    client: TestClient, state: AwsState, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_env(monkeypatch, UPLOAD_MAX_BYTES="1000")
    before = state.snapshot()

    response = upload(client, b"x" * 1001, "text/plain", "big.txt")

    assert response.status_code == 413
    assert response.json() == {"detail": "File exceeds the maximum size of 1000 bytes."}
    assert state.snapshot() == before
    assert upload(client, b"x" * 1000, "text/plain", "fits.txt").status_code == 202


def test_multipart_upload_over_the_limit_is_aborted(
    client: TestClient, state: AwsState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past one 5 MiB part the file goes to S3 as a multipart upload; crossing the limit
    in a later part aborts it, so neither an object nor a pending upload is left."""
    set_env(monkeypatch, UPLOAD_MAX_BYTES=str(6 * MiB), UPLOAD_PART_BYTES=str(5 * MiB))
    before = state.snapshot()

    response = upload(client, b"y" * (6 * MiB + 1), "text/plain", "big.txt")

    assert response.status_code == 413
    assert state.snapshot() == before
    assert state.multipart_uploads() == []


def test_multipart_upload_within_the_limit_is_complete(
    client: TestClient, state: AwsState, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_env(monkeypatch, UPLOAD_MAX_BYTES=str(6 * MiB), UPLOAD_PART_BYTES=str(5 * MiB))
    data = b"z" * (6 * MiB)

    upload_id = upload(client, data, "text/plain", "big.txt").json()["id"]

    assert state.s3_body(f"uploads/{upload_id}/big.txt") == data
    assert client.get(f"/uploads/{upload_id}").json()["facts"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert state.multipart_uploads() == []


def test_body_over_the_limit_is_413_before_the_file_is_parsed(
    client: TestClient, state: AwsState, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_env(monkeypatch, UPLOAD_MAX_BYTES="1000")
    before = state.snapshot()

    response = upload(client, b"x" * (1000 + ENVELOPE), "text/plain", "big.txt")

    assert response.status_code == 413
    assert response.json() == {"detail": f"Request body is larger than the limit of {1000 + ENVELOPE} bytes."}
    assert state.snapshot() == before


def test_a_streamed_body_is_cut_off_while_it_arrives(state: AwsState, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunked body (no Content-Length) of up to 64 MiB: the app stops reading it
    one chunk past the limit, instead of reading it all and checking afterwards."""
    from functions.uploads.app import app

    set_env(monkeypatch, UPLOAD_MAX_BYTES="100000")
    chunk = b"x" * 65536
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for part in [b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\n'] + [chunk] * 1024:
            sent += len(part)
            yield part
        yield b"\r\n--B--\r\n"

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            return await http.post(
                "/uploads", content=body(), headers={"content-type": "multipart/form-data; boundary=B"}
            )

    response = asyncio.run(post())

    assert response.status_code == 413
    assert sent <= 100000 + ENVELOPE + 2 * len(chunk)
    assert state.s3_keys() == [] and state.items(state.settings.uploads_table) == []


def test_a_real_server_refuses_a_declared_oversized_body_without_reading_it() -> None:
    """uvicorn, as in the container: Content-Length says 100 MB, the client sends 1 KiB
    and waits; the 413 arrives anyway, so the server never waited for the body."""
    server = start_function("uploads", {"UPLOAD_MAX_BYTES": "100000"})
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
            conn.sendall(
                b"POST /uploads HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 1024
            )
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                received = conn.recv(65536)
                if not received:
                    break
                answer += received
    finally:
        server.close()
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert answer.endswith(b'{"detail":"Request body is larger than the limit of 165536 bytes."}')


def test_record_write_failure_removes_the_stored_object(
    client: TestClient, state: AwsState, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functions.uploads.app as uploads_app

    throttled: Any = {"Error": {"Code": "ThrottlingException", "Message": "slow down"}, "ResponseMetadata": {}}

    class Table:
        def put_item(self, **_: Any) -> None:
            raise ClientError(throttled, "PutItem")

    monkeypatch.setattr(uploads_app, "_table", Table)
    before = state.snapshot()

    response = upload(client, image_bytes())

    assert response.status_code == 503
    assert response.json() == {"detail": "A storage service is unavailable; retry later."}
    assert state.snapshot() == before


def test_unknown_upload_is_404_json(client: TestClient) -> None:
    response = client.get(f"/uploads/{'d' * 32}")

    assert response.status_code == 404
    assert response.json() == {"detail": f"Upload {'d' * 32} not found."}


@pytest.mark.parametrize("upload_id", ["0x" + "0" * 30, "D" * 32, "d" * 40])
def test_malformed_upload_id_is_422(client: TestClient, upload_id: str) -> None:
    assert client.get(f"/uploads/{upload_id}").status_code == 422


def test_health_and_docs(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "service": "uploads"}
    assert client.get("/docs").status_code == 200
    operation = client.get("/openapi.json").json()["paths"]["/uploads"]["post"]
    assert "multipart/form-data" in operation["requestBody"]["content"]
    assert set(operation["responses"]) >= {"202", "413", "415", "422"}
