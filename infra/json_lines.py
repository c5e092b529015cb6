"""JSON log lines out of a process's output (standard library only: the Lambda helper image runs it)."""

from __future__ import annotations

import json
from typing import Any


def parse_json_lines(text: str) -> list[dict[str, Any]]:
    """JSON events from a process's output, skipping anything that is not a JSON object."""
    events = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events
