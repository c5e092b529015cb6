"""JSON request bodies as RFC 8259 defines them, checked before FastAPI reads them.

Python's ``json`` accepts ``NaN``, ``Infinity`` and ``-Infinity``, turns ``1e400`` into
``inf`` and keeps lone surrogates (``"\\ud800"``): none of them can be rendered back as
JSON or UTF-8, so a model that echoes them, an error that quotes them, a task or a
DynamoDB write that serialises them fails far from the request. Refused here, they are
the 422 FastAPI gives any malformed JSON (``json_invalid``, with where and why).
"""

from __future__ import annotations

import json
import math
import re
from email.message import Message as MimeHeader

from starlette.types import Message, Receive


class InvalidJsonBody(json.JSONDecodeError):
    """A body that parses with Python's ``json`` but is not RFC 8259 JSON text."""


class _Refused(Exception):
    pass


_MAYBE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
# A JSON string (its escapes included) or a run of anything that is no string and no punctuation.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[^"\s,:\[\]{}]+', re.DOTALL)
_CONSTANTS = frozenset({"NaN", "Infinity", "-Infinity"})


def _refuse_constant(name: str) -> float:
    raise _Refused(name)


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Refused(text)
    return value


def is_json_content_type(content_type: str | None) -> bool:
    """What FastAPI parses as JSON: ``application/json`` and ``application/*+json``."""
    if not content_type or "json" not in content_type.lower():
        return False
    header = MimeHeader()
    header["content-type"] = content_type
    subtype = header.get_content_subtype()
    return header.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _has_lone_surrogate(text: str) -> bool:
    return not text.isascii() and any("\ud800" <= char <= "\udfff" for char in text)


def _problem(token: str) -> str | None:
    """Why ``token`` (one of ``_TOKEN``'s) is not JSON, or ``None``."""
    if token in _CONSTANTS:
        return f"{token} is not a JSON number (RFC 8259)"
    if token.startswith('"'):
        try:
            decoded = json.loads(token)
        except ValueError:
            return None
        if _has_lone_surrogate(decoded):
            return "a string holds a lone surrogate (an unpaired \\ud800-\\udfff escape), which is not Unicode text"
        return None
    try:
        number = float(token)
    except ValueError:
        return None
    if math.isinf(number):
        return f"the number {token[:40]} is beyond the range of a double-precision number"
    return None


def _locate(text: str, otherwise: str) -> tuple[str, int]:
    """The first token of ``text`` that is not JSON: why, and where."""
    for match in _TOKEN.finditer(text):
        problem = _problem(match.group())
        if problem is not None:
            return problem, match.start()
    return otherwise, 0


def check_json_body(body: bytes) -> None:
    """Raise ``InvalidJsonBody`` if ``body`` parses but is not JSON every part of the app can render.

    A body that does not parse at all is left to FastAPI, which reports it its own way.
    """
    try:
        json.loads(body, parse_constant=_refuse_constant, parse_float=_finite)
    except _Refused:
        text = body.decode("utf-8", "replace")
        problem, position = _locate(text, "the body holds a number JSON cannot represent")
        raise InvalidJsonBody(problem, text, position) from None
    except ValueError:  # not JSON at all (UnicodeDecodeError included): FastAPI's own answer
        return
    if b"\\u" not in body:
        return
    text = body.decode("utf-8", "replace")
    if _MAYBE_SURROGATE.search(text):
        problem, position = _locate(text, "")
        if problem:
            raise InvalidJsonBody(problem, text, position)


def checked_receive(receive: Receive) -> Receive:
    """``receive``, checking the whole body (``check_json_body``) when the app first reads it.

    From inside ``receive``, the error reaches the app's exception handlers (and FastAPI's
    body reading) as a request error. A request whose body is never read costs nothing.
    """
    checked = False

    async def receive_checked() -> Message:
        nonlocal checked
        if checked:
            return await receive()
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message  # the client went away: nothing to check
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        checked = True
        body = b"".join(chunks)
        check_json_body(body)
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_checked
