"""When each message of a batch may start, so that the worker can run them side by side.

- At most ``concurrency`` messages run at once (``WORKER_CONCURRENCY``): an ``async def`` task
  on the batch's event loop, a ``def`` task in a thread of its own, so at most that many threads.
- Messages of one FIFO message group run one after another, in the order SQS delivered them;
  once one fails, the later ones of its group are not run in this batch (they go back to the
  queue behind it), as Powertools' ``SqsFifoPartialProcessor`` does.
- Two messages of one ``task_id`` (SQS delivered it twice) run one after the other: the second
  then finds the first one's idempotency record, and a task has one run open at a time.
- Once a task of the batch is stuck (``halt``: the process must end), no other message starts;
  nor does one a gate (the container worker's) refuses (it is stopping): such a message goes
  back to the queue, never started.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol


class NotStarted(Exception):
    """The message was not run in this batch; it goes back to the queue."""


class StartGate(Protocol):
    def may_start(self, message_id: str) -> bool:
        """True if the message may start now; False to leave it to the queue (the worker stops)."""
        ...


class _Turn:
    __slots__ = ("after", "done", "failed", "group")

    def __init__(self, group: str | None, after: list[_Turn]) -> None:
        self.group = group
        self.after = after
        self.done = asyncio.Event()
        self.failed = False


def _task_id(body: Any) -> str | None:
    try:
        decoded = json.loads(body)
    except (TypeError, ValueError):
        return None
    task_id = decoded.get("task_id") if isinstance(decoded, dict) else None
    return task_id if isinstance(task_id, str) else None


class BatchTurns:
    """The order and the bound of one batch's messages (built from the event's raw records)."""

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]],
        concurrency: int,
        gate: StartGate | None = None,
        halt: Callable[[], bool] = lambda: False,
    ) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._gate = gate
        self._halt = halt
        self._turns: dict[str, deque[_Turn]] = {}
        last: dict[str, _Turn] = {}
        for record in records:
            group = (record.get("attributes") or {}).get("MessageGroupId")
            keys = [f"group:{group}"] if group else []
            task_id = _task_id(record.get("body"))
            if task_id is not None:
                keys.append(f"task:{task_id}")
            turn = _Turn(group, [last[key] for key in keys if key in last])
            for key in keys:
                last[key] = turn
            self._turns.setdefault(str(record.get("messageId")), deque()).append(turn)

    @asynccontextmanager
    async def turn(self, message_id: str) -> AsyncIterator[None]:
        """Wait for this message's turn and a free slot; raises NotStarted if it may not run."""
        turn = self._turns[message_id].popleft()
        try:
            for earlier in turn.after:
                await earlier.done.wait()
            if any(earlier.failed and earlier.group == turn.group for earlier in turn.after if turn.group):
                raise NotStarted("an earlier message of its message group failed in this batch")
            async with self._slots:
                if self._halt():
                    raise NotStarted("a task of this batch is stuck: the process ends")
                if self._gate is not None and not self._gate.may_start(message_id):
                    raise NotStarted("the worker is stopping")
                yield
        except BaseException:
            turn.failed = True
            raise
        finally:
            turn.done.set()
