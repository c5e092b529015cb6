"""Random ids: 32 lower-case hex digits, as ``uuid.uuid4().hex`` prints them.

Drawn from ``os.urandom`` 64 ids at a time. Each ``os.urandom`` call releases the GIL, and
under load a server's event loop then waits for a thread-pool task to hand it back: one
call per id (a request takes three: its id, its trace's and its task's) cost more there
than the rest of making them. The pool is emptied in a forked child, so no two processes
hand out the same id.
"""

from __future__ import annotations

import os
from collections import deque

_BATCH = 64
_pool: deque[str] = deque()
os.register_at_fork(after_in_child=_pool.clear)


def _refill() -> None:
    digits = os.urandom(16 * _BATCH).hex()
    _pool.extend(digits[start : start + 32] for start in range(0, len(digits), 32))


def new_id() -> str:
    """A fresh id; safe from any thread (``deque.popleft`` is atomic)."""
    while True:
        try:
            return _pool.popleft()
        except IndexError:
            _refill()
