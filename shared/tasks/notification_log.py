"""The notification log of the tutorial: one line per notification, appended safely.

Each line is a single ``write`` on an ``O_APPEND`` descriptor under an exclusive
``flock``, so concurrent requests, threads and worker processes never interleave.
Whatever a request put in it, an entry is one line: control characters (a newline
in a query string, a carriage return, an escape sequence) are written escaped, so no
request can forge a line of its own.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from shared.settings import get_settings

_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if code != 0x09}
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def one_line(text: str) -> str:
    """``text`` as a single line ending in a newline, its control characters escaped (tabs kept)."""
    line = text.removesuffix("\n")
    # Every character escaped is unprintable: a printable line (most) skips the per-character mapping.
    return (line if line.isprintable() else line.translate(_ESCAPES)) + "\n"


def log_path() -> Path:
    return Path(get_settings().notification_log_path)


def append(text: str) -> None:
    """Append ``text`` as one line (the seeds' messages carry their own final newline)."""
    path = get_settings().notification_log_path
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:  # its directory is created once, not checked on every line
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, one_line(text).encode())
    finally:
        os.close(fd)


def read() -> str:
    path = log_path()
    return path.read_text() if path.exists() else ""
