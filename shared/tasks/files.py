"""Files in S3: streamed in with a size limit, described (size, SHA-256, sniffed type), thumbnailed.

The content type is always sniffed from the bytes (magic numbers, via ``puremagic``),
never taken from the client. Pillow and puremagic are imported where they are used,
so the functions that never touch a file do not pay for them at cold start.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from tempfile import SpooledTemporaryFile
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from shared import aws
from shared.background import PermanentTaskError, task
from shared.logs import get_logger
from shared.settings import get_settings
from shared.tasks.audit import utc_now

if TYPE_CHECKING:
    from PIL.Image import Image

log = get_logger("shared.tasks.files")

SNIFF_BYTES = 4096
GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
THUMBNAIL_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}
_TEXT_CONTROLS = frozenset("\t\n\r\f\b\x1b")
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_READ_CHUNK = 64 * 1024
MAX_FILENAME = 100
BYTES_PER_PIXEL = 4  # Pillow keeps RGB, RGBA, CMYK and 32-bit images at 4 bytes a pixel
DEFAULT_MEMORY_MB = 1024
_CGROUP_MEMORY_LIMIT = "/sys/fs/cgroup/memory.max"


def _memory_mb() -> int:
    """The function's memory: Lambda's MemorySize, else the container's cgroup limit."""
    lambda_memory = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
    if lambda_memory.isdigit():
        return int(lambda_memory)
    try:
        with open(_CGROUP_MEMORY_LIMIT) as limit:
            value = limit.read().strip()
    except OSError:
        return DEFAULT_MEMORY_MB
    return int(value) // (1024 * 1024) if value.isdigit() else DEFAULT_MEMORY_MB


def max_image_pixels(has_alpha: bool) -> int:
    """The most pixels an image to thumbnail may have.

    Its decoded copy takes 4 bytes a pixel (RGB is stored as RGBX), and shrinking an image
    with transparency makes one premultiplied full-size copy more: 8 bytes a pixel then.
    Together they must fit ``IMAGE_MEMORY_BUDGET_MB``, by default half the function's memory
    (Lambda's ``MemorySize``, else the container's limit); never more than ``THUMBNAIL_MAX_PIXELS``.
    """
    settings = get_settings()
    budget_mb = settings.image_memory_budget_mb or _memory_mb() // 2
    bytes_per_pixel = 2 * BYTES_PER_PIXEL if has_alpha else BYTES_PER_PIXEL
    return min(settings.thumbnail_max_pixels, budget_mb * 1024 * 1024 // bytes_per_pixel)


class UploadTooLarge(Exception):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"File exceeds the maximum size of {max_bytes} bytes.")
        self.max_bytes = max_bytes


class ProcessingError(PermanentTaskError):
    """A problem with the file itself; its message is shown to the client as the reason.

    Permanent: processing the same bytes again fails the same way, so the worker does not retry.
    """


class FileFacts(NamedTuple):  # not a dataclass: a fifth of its cost at the uploads function's cold start
    size: int
    sha256: str
    content_type: str


def normalize_content_type(value: str | None) -> str:
    """``Image/JPG; charset=x`` -> ``image/jpeg``; empty string when missing."""
    media_type = (value or "").split(";", 1)[0].strip().lower()
    return _ALIASES.get(media_type, media_type)


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the end of the sniffed window is still text.
        if exc.reason != "unexpected end of data":
            return False
        text = head[: exc.start].decode("utf-8")
    return not any(unicodedata.category(ch) == "Cc" and ch not in _TEXT_CONTROLS for ch in text)


def sniff(head: bytes) -> str:
    """The content type of a file from its first bytes; ``application/octet-stream`` if unknown."""
    import puremagic

    if not head:
        return "application/octet-stream"
    try:
        found = normalize_content_type(puremagic.from_string(head, mime=True))
    except puremagic.PureError:
        found = ""
    if found:
        return found
    return "text/plain" if _looks_like_text(head) else "application/octet-stream"


def safe_filename(name: str | None, default: str = "upload") -> str:
    """A file name that is safe as the last segment of an S3 key and in headers.

    Drops any directory part (``../../etc/passwd`` -> ``passwd``, Windows paths too),
    control and format characters, and leading dots; transliterates to ASCII and keeps
    only ``A-Z a-z 0-9 . _ -``; at most 100 characters, extension kept.
    """
    text = unicodedata.normalize("NFKD", name or "")
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = text.encode("ascii", "ignore").decode()
    text = _UNSAFE_KEY_CHARS.sub("_", text).strip("._-")
    if len(text) > MAX_FILENAME:
        stem, dot, ext = text.rpartition(".")
        ext = ext[:16] if dot and stem else ""
        text = text[: MAX_FILENAME - len(ext) - 1].rstrip("._-") + ("." + ext if ext else "")
    return text or default


def _read_full(stream: IO[bytes], size: int) -> bytes:
    """Up to ``size`` bytes, fewer only at the end of the stream."""
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = stream.read(min(remaining, 1024 * 1024))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def store_stream(
    stream: IO[bytes],
    bucket: str,
    key: str,
    *,
    max_bytes: int,
    content_type: str,
    filename: str | None = None,
    part_bytes: int | None = None,
) -> int:
    """Copy ``stream`` to ``s3://bucket/key`` part by part; returns the size written.

    At most one part is held in memory. Past ``max_bytes`` it raises
    :class:`UploadTooLarge` and leaves nothing behind: a small file is checked
    before its single ``PutObject``, a multipart upload is aborted.
    """
    part_bytes = part_bytes or get_settings().upload_part_bytes
    s3 = aws.s3()
    extra: dict[str, Any] = {"ContentType": content_type}
    if filename:
        extra["ContentDisposition"] = f'attachment; filename="{filename}"'

    chunk = _read_full(stream, part_bytes)
    if len(chunk) > max_bytes:
        raise UploadTooLarge(max_bytes)
    if len(chunk) < part_bytes:
        s3.put_object(Bucket=bucket, Key=key, Body=chunk, **extra)
        return len(chunk)

    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
    try:
        parts: list[dict[str, Any]] = []
        total = 0
        while chunk:
            total += len(chunk)
            if total > max_bytes:
                raise UploadTooLarge(max_bytes)
            number = len(parts) + 1
            etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk)["ETag"]
            parts.append({"ETag": etag, "PartNumber": number})
            chunk = _read_full(stream, part_bytes)
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
        )
    except BaseException:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    return total


def _scan(chunks: Iterable[bytes], sink: IO[bytes] | None = None) -> FileFacts:
    digest = hashlib.sha256()
    size = 0
    head = bytearray()
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
        if len(head) < SNIFF_BYTES:
            head += chunk[: SNIFF_BYTES - len(head)]
        if sink is not None:
            sink.write(chunk)
    return FileFacts(size=size, sha256=digest.hexdigest(), content_type=sniff(bytes(head)))


def describe_object(bucket: str, key: str) -> FileFacts:
    """Size, SHA-256 and sniffed content type of an S3 object, streamed (one pass)."""
    body = aws.s3().get_object(Bucket=bucket, Key=key)["Body"]
    with body:
        return _scan(body.iter_chunks(_READ_CHUNK))


def fit_within(size: tuple[int, int], box: int) -> tuple[int, int]:
    """What ``Image.thumbnail((box, box))`` makes of an image of ``size``: aspect kept, never enlarged."""
    width, height = size
    if width <= box and height <= box:
        return size
    aspect = width / height

    def closest(number: float, error: Callable[[int], float]) -> int:
        return max(min(math.floor(number), math.ceil(number), key=error), 1)

    if aspect >= 1:
        return box, closest(box / aspect, lambda n: 0 if n == 0 else abs(aspect - box / n))
    return closest(box * aspect, lambda n: abs(aspect - n / box)), box


def _decode_image(source: IO[bytes], largest: int) -> tuple[Image, tuple[int, int]]:
    """The first frame, at most ``largest`` pixels a side, upright and in a mode WebP can store,
    with the upright size of the whole image.

    ProcessingError if it is no image, is damaged, or has more pixels than the memory budget.
    Shrunk in place before any copy: the full-size image is decoded once and never converted.
    """
    from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(source) as opened:
            width, height = opened.size
            max_pixels = max_image_pixels(opened.mode in ("RGBA", "LA", "PA") or "transparency" in opened.info)
            if width * height > max_pixels:
                raise ProcessingError(f"Image is {width}x{height} pixels, more than the {max_pixels} allowed.")
            turned = opened.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8)
            opened.draft(None, (largest, largest))  # JPEG: decode at a reduced scale
            # Palette images resize by nearest neighbour: convert them (1 byte a pixel) first.
            image = (
                opened.convert("RGBA" if "transparency" in opened.info else "RGB")
                if opened.mode in ("1", "P")
                else opened
            )
            image.thumbnail((largest, largest))
            image = ImageOps.exif_transpose(image)
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            return image.convert("RGBA" if has_alpha else "RGB"), ((height, width) if turned else (width, height))
    except UnidentifiedImageError as exc:
        raise ProcessingError("The file is not an image that can be decoded.") from exc
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise ProcessingError(f"The image could not be decoded: {exc}.") from exc


def _render_thumbnails(source: IO[bytes], bucket: str, prefix: str, sizes: Sequence[int]) -> list[str]:
    from PIL import Image

    wanted = sorted(set(sizes))
    image, full_size = _decode_image(source, wanted[-1])
    keys = []
    for size in wanted:
        # Sized from the whole image's dimensions, as if each were made from it directly.
        target = fit_within(full_size, size)
        thumbnail = image if target == image.size else image.resize(target, Image.Resampling.BICUBIC, reducing_gap=2.0)
        buffer = io.BytesIO()
        thumbnail.save(buffer, "WEBP", quality=80)
        key = f"{prefix}{size}.webp"
        aws.s3().put_object(Bucket=bucket, Key=key, Body=buffer.getvalue(), ContentType="image/webp")
        keys.append(key)
    return keys


def make_thumbnails(bucket: str, key: str, prefix: str, sizes: Sequence[int] | None = None) -> list[str]:
    """WebP thumbnails of the image at ``key``, written to ``{prefix}{size}.webp``; their keys."""
    body = aws.s3().get_object(Bucket=bucket, Key=key)["Body"]
    with body, SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool:
        for chunk in body.iter_chunks(_READ_CHUNK):
            spool.write(chunk)
        spool.seek(0)
        return _render_thumbnails(spool, bucket, prefix, sizes or get_settings().thumbnail_sizes)


# --- the uploads function's records (table UPLOADS_TABLE, key ``id``) -------------------


def thumbnail_prefix(upload_id: str) -> str:
    return f"thumbnails/{upload_id}/"


def _uploads_table() -> Any:
    return aws.dynamodb().Table(get_settings().uploads_table)


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, ProcessingError):
        return str(exc)
    from botocore.exceptions import BotoCoreError, ClientError  # loaded with the client, not at cold start

    if isinstance(exc, ClientError):
        return f"Storage error: {exc.response.get('Error', {}).get('Code', 'unknown')}."
    if isinstance(exc, BotoCoreError):
        return "Storage unavailable."
    return f"Processing failed ({type(exc).__name__})."


def _mark_processed(upload_id: str, facts: FileFacts, thumbnails: list[str]) -> None:
    _uploads_table().update_item(
        Key={"id": upload_id},
        UpdateExpression="SET #status = :status, facts = :facts, thumbnails = :thumbnails, updated_at = :now "
        "REMOVE reason",
        ConditionExpression="attribute_exists(id)",
        ExpressionAttributeNames={"#status": "status"},
        ExpressionAttributeValues={
            ":status": "processed",
            ":facts": facts._asdict(),
            ":thumbnails": thumbnails,
            ":now": utc_now(),
        },
    )


def _mark_failed(upload_id: str, reason: str) -> None:
    _uploads_table().update_item(
        Key={"id": upload_id},
        UpdateExpression="SET #status = :status, reason = :reason, updated_at = :now REMOVE facts, thumbnails",
        ConditionExpression="attribute_exists(id)",
        ExpressionAttributeNames={"#status": "status"},
        ExpressionAttributeValues={":status": "failed", ":reason": reason, ":now": utc_now()},
    )


@task("files.process_upload", timeout=120, tracked=True)
def process_upload(upload_id: str) -> dict[str, Any]:
    """Facts and thumbnails of an upload, then its status: ``processed`` or ``failed``.

    Tracked: the client follows it at the ``task_url`` of the upload's 202; what it returns (the
    facts and the thumbnails' keys) is the task's result there.

    One GET: the object streams through the hash into a spooled file that Pillow
    reads for the thumbnails. A failure marks the upload ``failed`` with the reason
    and is raised again, so the task layer logs it (and a durable backend retries).
    """
    settings = get_settings()
    item = _uploads_table().get_item(Key={"id": upload_id}).get("Item")
    if item is None:
        raise LookupError(f"upload {upload_id} does not exist")
    bucket, key = str(item["bucket"]), str(item["key"])
    try:
        body = aws.s3().get_object(Bucket=bucket, Key=key)["Body"]
        with body, SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool:
            facts = _scan(body.iter_chunks(_READ_CHUNK), sink=spool)
            if facts.content_type not in settings.upload_allowed_types:
                raise ProcessingError(f"Content type {facts.content_type} is not allowed.")
            thumbnails: list[str] = []
            if facts.content_type in THUMBNAIL_TYPES:
                spool.seek(0)
                thumbnails = _render_thumbnails(spool, bucket, thumbnail_prefix(upload_id), settings.thumbnail_sizes)
        _mark_processed(upload_id, facts, thumbnails)
    except Exception as exc:
        reason = _failure_reason(exc)
        try:
            _mark_failed(upload_id, reason)
        except Exception as mark_error:
            log.error("upload.mark_failed_failed", upload_id=upload_id, error=str(mark_error))
        raise
    log.info("upload.processed", upload_id=upload_id, size=facts.size, content_type=facts.content_type)
    return {"upload_id": upload_id, "size": facts.size, "content_type": facts.content_type, "thumbnails": thumbnails}
