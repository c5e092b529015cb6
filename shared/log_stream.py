"""The stream every log line is written to: in a server, one write every few milliseconds.

Each ``write`` to a file or a pipe is a system call that releases the GIL. In a busy server the
event loop then waits for a thread-pool task to hand the GIL back, once per line: measured
with uvicorn under load, the lines cost several times more than rendering them. Bound to the
server's event loop (``bind``), the lines that loop's thread prints are joined and written
once, ``WRITE_DELAY_S`` after the first of them; a line printed anywhere else (another thread,
a stopped loop, no loop bound: Lambda, the CLIs, the tests) is written at once, after whatever
was pending, so the order of lines is kept.

A line waits ``WRITE_DELAY_S`` at most while the loop runs; ``unbind`` (the server's stop) and
a line or ``flush`` from outside the loop write whatever is pending, and so does the
interpreter's exit. Only a kill (SIGKILL, a crash of the interpreter) loses the last few
milliseconds of lines.
"""

from __future__ import annotations

import asyncio
import atexit
import sys
import threading
from typing import TextIO

WRITE_DELAY_S = 0.005
"""How long the loop's lines are collected: at a few hundred requests a second, a dozen lines per write."""


class LineBatcher:
    """A text stream around ``stream`` that, bound to a running loop, writes that loop's lines together."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Batch the lines printed while ``loop`` runs on its own thread."""
        self._loop = loop
        atexit.register(self.unbind)

    def unbind(self) -> None:
        """Write every pending line; from now on each line is written at once."""
        self._loop = None
        atexit.unregister(self.unbind)
        self._drain()

    def _bound_loop_here(self) -> asyncio.AbstractEventLoop | None:
        """The bound loop, if it runs on the calling thread: its lines are collected."""
        loop = self._loop
        return loop if loop is not None and asyncio._get_running_loop() is loop else None

    def write(self, text: str) -> int:
        loop = self._bound_loop_here()
        if loop is not None:
            with self._lock:
                self._pending.append(text)
                if not self._scheduled:
                    self._scheduled = True
                    loop.call_later(WRITE_DELAY_S, self._drain_later)
            return len(text)
        if self._pending:  # lines the loop collected come first
            self._drain()
        return self.stream.write(text)

    def flush(self) -> None:
        """What a logger calls after each line: the loop's own lines wait for their batch."""
        if self._bound_loop_here() is None:
            if self._pending:
                self._drain()
            self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def _drain_later(self) -> None:
        """The timer's write. A stream that fails (stdout closed, a broken pipe) loses this batch, said
        on stderr: raised here, asyncio would log it through this same stream, every few milliseconds."""
        try:
            self._drain()
        except (OSError, ValueError) as exc:
            print(f"log lines lost: the log stream failed ({type(exc).__name__}: {exc})", file=sys.stderr)

    def _drain(self) -> None:
        """Write the collected lines in one call (cleared first: a failing stream does not keep them)."""
        with self._lock:
            self._scheduled = False
            if self._pending:
                text = "".join(self._pending)
                self._pending.clear()
                self.stream.write(text)
                self.stream.flush()
