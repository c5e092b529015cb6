"""Every accepted task ends exactly once: a check over JSON log lines.

    python -m infra.lifecycle_check api.log worker.log      # or: ... | python -m infra.lifecycle_check

Reads one or several processes' logs (files, or stdin), merges them by ``timestamp``,
ignores every line that is not a JSON object, and follows each task by its ``task_id``
with a small state machine (the vocabulary is ``shared.background.events``):

- ``task.queued`` accepts a task. In the accepting process it then ends in exactly one of
  ``ENDS_HERE`` or ``MOVES_TO_QUEUE``; none is an orphan, two are a double end.
- After ``MOVES_TO_QUEUE`` the task is the worker's (its lines have ``backend: "sqs"``).
  Each receive is an attempt that ends in ``WORKER_ATTEMPT_ENDS`` (the message comes back)
  or ``WORKER_FINAL`` (or ``task.failed`` with ``permanent: true``); after the last attempt's
  end comes ``task.dead_lettered``, which is final. A ``task.lost`` for a queued task (``make
  run`` reporting messages moto would drop) is final too: the loss was said out loud.
- When the logs hold a worker's lines (any ``worker.*`` event or a worker task line;
  ``--follow-handoffs`` forces it, ``--no-follow-handoffs`` turns it off), a task that moved
  to the queue must reach a worker final end; otherwise "in the queue" is an acceptable end.
  A task first seen on a worker line (its acceptance is in another log) must end there too.

Exit 0 when every task ended once, 1 with one orphan per line, 2 when a file cannot be read.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from shared.background.events import (
    ACCEPTED,
    ENDS_HERE,
    MOVES_TO_QUEUE,
    RUNNING,
    STARTED,
    WORKER_ATTEMPT_ENDS,
    WORKER_FINAL,
)

WORKER_BACKEND = "sqs"
RUN_UNDER_WAY = frozenset({STARTED, RUNNING})
"""A receive's run is under way: ``task.started`` (DEBUG) or ``task.running`` (INFO, after the notice interval)."""
QUEUED_BY = "queued_by"
"""Bound by the worker to every line of a message's run: the service that queued the task."""
LOST = "task.lost"
"""Not a worker event in ``events.py``: a queued task's ``task.lost`` comes from whoever saw it go."""


def parse_lines(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects among ``lines``, each given the last timestamp seen when it has none."""
    timestamp = ""
    for line in lines:
        text = line.strip()
        if not text.startswith("{"):
            continue
        try:
            event = json.loads(text)
        except json.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        stamp = event.get("timestamp")
        if isinstance(stamp, str):
            timestamp = stamp
        else:
            event["timestamp"] = timestamp
        yield event


def merge(streams: Iterable[Iterable[str]]) -> Iterator[dict[str, Any]]:
    """Several processes' lines in timestamp order (each process's own order kept)."""
    return heapq.merge(*(parse_lines(stream) for stream in streams), key=lambda event: str(event["timestamp"]))


@dataclass
class Task:
    """One task's story: its end in the accepting process and, once queued, on the worker."""

    task_id: str
    name: str | None = None
    request_id: str | None = None
    accepted: bool = False
    ends_here: list[str] = field(default_factory=list)
    worker: str | None = None
    """None (not queued), "queue" (waiting for a receive), "running" (received) or "done"."""
    events: list[str] = field(default_factory=list)

    @property
    def moved(self) -> bool:
        return self.worker is not None

    def on_worker_line(self, event: dict[str, Any]) -> bool:
        """A worker's line: backend sqs, and the worker's own ``queued_by`` field or a task already queued.

        ``queued_by`` settles the race where the worker's first lines are stamped before the
        accepting process's ``task.handed_off`` (the message was taken before that line was written).
        """
        if event.get("backend") != WORKER_BACKEND:
            return False
        return QUEUED_BY in event or self.moved or not self.accepted

    def feed(self, event: dict[str, Any]) -> bool:
        """Advance on one line; returns whether it was a worker's line."""
        name = str(event["event"])
        self.events.append(name)
        self.name = self.name or event.get("task")
        self.request_id = self.request_id or event.get("request_id")
        if name == ACCEPTED:
            self.accepted = True
            return False
        if self.on_worker_line(event) and name not in MOVES_TO_QUEUE:
            self.worker_step(name, event)
            return True
        if name in ENDS_HERE or name in MOVES_TO_QUEUE:
            self.ends_here.append(name)
            if name in MOVES_TO_QUEUE and self.worker is None:
                self.worker = "queue"
        return False

    def worker_step(self, name: str, event: dict[str, Any]) -> None:
        if self.worker is None:
            self.worker = "queue"  # accepted in a log we were not given
        if name in WORKER_FINAL or name == LOST or (name == "task.failed" and event.get("permanent") is True):
            self.worker = "done"
        elif name in WORKER_ATTEMPT_ENDS:
            if self.worker != "done":
                self.worker = "queue"
        elif name in RUN_UNDER_WAY:
            self.worker = "running"

    def problem(self, follow_handoffs: bool) -> str | None:
        """Why this task did not end exactly once, or None."""
        if self.accepted and not self.ends_here:
            return "accepted, never ended"
        if len(self.ends_here) > 1:
            return f"ended {len(self.ends_here)} times: {', '.join(self.ends_here)}"
        if not follow_handoffs or not self.moved or self.worker == "done":
            return None
        if self.worker == "running":
            return "received by the worker, its attempt never ended"
        return "in the queue when the log ended (the worker never finished it)"

    def describe(self, problem: str) -> str:
        return (
            f"task_id={self.task_id} task={self.name} request_id={self.request_id}: {problem}"
            f" (events: {', '.join(self.events)})"
        )


@dataclass
class Check:
    """Feed log lines, then ``orphans()``."""

    follow_handoffs: bool | None = None
    """None: follow handoffs when any worker line is present."""
    tasks: dict[str, Task] = field(default_factory=dict)
    saw_worker: bool = False

    def feed(self, event: dict[str, Any]) -> None:
        name = event.get("event")
        if not isinstance(name, str):
            return
        if name.startswith("worker."):
            self.saw_worker = True
        task_id = event.get("task_id")
        if not isinstance(task_id, str) or not name.startswith("task."):
            return
        task = self.tasks.get(task_id)
        if task is None:
            task = Task(task_id)
            if name != ACCEPTED and not task.on_worker_line(event):
                return  # neither accepted nor received in these logs: not ours to follow
            self.tasks[task_id] = task
        if task.feed(event):
            self.saw_worker = True

    def orphans(self) -> list[str]:
        follow = self.saw_worker if self.follow_handoffs is None else self.follow_handoffs
        found = []
        for task in self.tasks.values():
            problem = task.problem(follow)
            if problem is not None:
                found.append(task.describe(problem))
        return found


def orphans(streams: Iterable[Iterable[str]], follow_handoffs: bool | None = None) -> list[str]:
    """Each task of these logs (one stream of lines per process) that did not end exactly once."""
    check = Check(follow_handoffs)
    for event in merge(streams):
        check.feed(event)
    return check.orphans()


def main(argv: list[str] | None = None, stdin: TextIO | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.lifecycle_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="*", help="log files, one per process (none or '-': stdin)")
    follow = parser.add_mutually_exclusive_group()
    follow.add_argument(
        "--follow-handoffs",
        dest="follow",
        action="store_true",
        default=None,
        help="a queued task must reach a worker's final end (default: when the logs hold a worker's lines)",
    )
    follow.add_argument(
        "--no-follow-handoffs", dest="follow", action="store_false", help="'in the queue' is an acceptable end"
    )
    args = parser.parse_args(argv)
    streams: list[Iterable[str]] = []
    for name in args.files or ["-"]:
        if name == "-":
            streams.append(list(stdin or sys.stdin))
            continue
        try:
            with open(name, encoding="utf-8", errors="replace") as file:
                streams.append(file.readlines())
        except OSError as exc:
            print(f"lifecycle_check: cannot read {name}: {exc.strerror}", file=sys.stderr)
            return 2
    found = orphans(streams, args.follow)
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
