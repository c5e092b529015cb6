"""Capture what the real logging pipeline prints, as parsed JSON events."""

from __future__ import annotations

import io
import json
from typing import Any


class LogCapture:
    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line.strip()]

    def named(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event and all(e.get(k) == v for k, v in match.items())]
