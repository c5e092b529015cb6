"""Random ids: 32 lower-case hex digits, as ``uuid.uuid4().hex`` prints them.

Made from ``os.urandom`` directly: building a ``UUID`` first costs a few microseconds,
and a request pays for two ids (its own and its task's) before anything else.
"""

from __future__ import annotations

import os


def new_id() -> str:
    return os.urandom(16).hex()
