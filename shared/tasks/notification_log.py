"""The notification log of the tutorial: one line per notification, appended safely.

Each line is a single ``write`` on an ``O_APPEND`` descriptor under an exclusive
``flock``, so concurrent requests, threads and worker processes never interleave.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from shared.settings import get_settings


def log_path() -> Path:
    return Path(get_settings().notification_log_path)


def append(text: str) -> None:
    """Append ``text`` as it is (the seeds' messages carry their own newlines)."""
    path = log_path()
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:  # its directory is created once, not checked on every line
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def read() -> str:
    path = log_path()
    return path.read_text() if path.exists() else ""
