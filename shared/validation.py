"""Small input rules the functions share, so bad input is a 422 before anything is written."""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any

from email_validator import EmailNotValidError, validate_email
from fastapi import Path
from pydantic import AfterValidator, GetCoreSchemaHandler, GetJsonSchemaHandler, WithJsonSchema
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

ID_PATTERN = r"^[0-9a-f]{32}$"

# Characters no text field takes: controls (Cc), format characters (Cf: zero-width, bidi
# overrides), private use and the noncharacters. One class, both the OpenAPI schema's
# ``pattern`` and the validator, so the schema promises exactly what is accepted. Lone
# surrogates (only a JSON escape can make one) are refused too, outside the pattern: a
# pattern cannot name them in the engines that read schemas.
_FORBIDDEN = (
    r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    r"\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ue000-\uf8ff\ufdd0-\ufdef"
    r"\ufeff\ufff9-\ufffb\ufffe\uffff\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    r"\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f\U000f0000-\U0010ffff"
)
SINGLE_LINE_PATTERN = rf"^[^{_FORBIDDEN}\t\n\r]*$"
MULTI_LINE_PATTERN = rf"^[^{_FORBIDDEN}]*$"


class _Characters:
    """Rejects the characters ``pattern`` excludes, and says so in the JSON schema."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern

    @functools.cached_property
    def _allowed(self) -> re.Pattern[str]:
        # Compiled with the first text it checks (~0.4 ms each), not at every cold start.
        return re.compile(self.pattern.replace("[^", "[^\\ud800-\\udfff", 1))

    def check(self, value: str) -> str:
        if self._allowed.fullmatch(value) is None:
            found = next(ch for ch in value if self._allowed.fullmatch(ch) is None)
            raise ValueError(f"must not contain control, format or private-use characters (found U+{ord(found):04X})")
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["pattern"] = self.pattern
        return json_schema


def _email(value: str) -> str:
    """An e-mail address, normalized; ``.test`` domains (RFC 2606) included, as ``format: email`` allows."""
    try:
        return validate_email(value, check_deliverability=False, test_environment=True).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"value is not a valid email address: {exc}") from None


ResourceId = Annotated[str, Path(pattern=ID_PATTERN, description="32 lower-case hex digits.", examples=["0" * 32])]
Email = Annotated[str, AfterValidator(_email), WithJsonSchema({"type": "string", "format": "email"})]
SingleLine = _Characters(SINGLE_LINE_PATTERN)
MultiLine = _Characters(MULTI_LINE_PATTERN)
