"""Small input rules the functions share, so bad input is a 422 before anything is written."""

from __future__ import annotations

import unicodedata
from typing import Annotated

from fastapi import Path
from pydantic import AfterValidator

ID_PATTERN = r"^[0-9a-f]{32}$"
_LINE_BREAKS = frozenset("\n\r\t")


def _reject_control(value: str, allowed: frozenset[str]) -> str:
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") and ch not in allowed:
            raise ValueError(f"must not contain control or unassigned characters (found U+{ord(ch):04X})")
    return value


def single_line(value: str) -> str:
    return _reject_control(value, frozenset())


def multi_line(value: str) -> str:
    return _reject_control(value, _LINE_BREAKS)


ResourceId = Annotated[str, Path(pattern=ID_PATTERN, description="32 lower-case hex digits.", examples=["0" * 32])]
SingleLine = AfterValidator(single_line)
MultiLine = AfterValidator(multi_line)
