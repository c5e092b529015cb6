"""Durable tasks for the worker tests, registered on import (TASK_MODULES in subprocesses).

Each writes one line to the file it is given, so a test can count runs across processes.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from shared.background import PermanentTaskError, task


def _append(path: str, line: str) -> None:
    with Path(path).open("a") as file:
        file.write(line + "\n")


@task("tests.durable.record")
def record(path: str, label: str) -> None:
    _append(path, label)


@task("tests.durable.explode")
def explode(path: str, label: str) -> None:
    _append(path, f"exploding {label}")
    raise RuntimeError(f"poison message {label}")


@task("tests.durable.slow")
def slow(path: str, label: str, seconds: float) -> None:
    _append(path, f"started {label}")
    time.sleep(seconds)
    _append(path, f"finished {label}")


@task("tests.durable.noop")
def noop() -> None:
    return None


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@task("tests.durable.side_effect_after")
def side_effect_after(path: str, label: str, seconds: float) -> None:
    """Sleeps, then does its one side effect, stamped with the wall clock (seconds since the epoch)."""
    _append(path, f"started {label}")
    time.sleep(seconds)
    _append(path, f"side effect {label} {time.time()}")


@task("tests.durable.slow_async")
async def slow_async(path: str, label: str, seconds: float) -> None:
    _append(path, f"started {label}")
    await asyncio.sleep(seconds)
    _append(path, f"finished {label}")


@task("tests.durable.refuse")
def refuse(path: str, label: str) -> None:
    """Fails the way a bad input does: running it again cannot help."""
    _append(path, f"refused {label}")
    raise PermanentTaskError(f"bad input {label}")


def _timed(path: str, label: str, started: float) -> None:
    """One line per run: its label, when it started and when it ended (``time.monotonic``)."""
    _append(path, f"{label} {started} {time.monotonic()}")


@task("tests.durable.timed_wait")
async def timed_wait(path: str, label: str, seconds: float) -> None:
    """An I/O-bound task: it awaits, as a call to SES, S3 or DynamoDB through an async client would."""
    started = time.monotonic()
    await asyncio.sleep(seconds)
    _timed(path, label, started)


@task("tests.durable.timed_block")
def timed_block(path: str, label: str, seconds: float) -> None:
    """A ``def`` task that blocks its thread, as a call through boto3 would."""
    started = time.monotonic()
    time.sleep(seconds)
    _timed(path, label, started)


@task("tests.durable.timed_explode")
async def timed_explode(path: str, label: str, seconds: float) -> None:
    started = time.monotonic()
    await asyncio.sleep(seconds)
    _timed(path, label, started)
    raise RuntimeError(f"poison message {label}")


def runs(path: Path) -> dict[str, tuple[float, float]]:
    """What the timed tasks wrote: label -> (start, end)."""
    found: dict[str, tuple[float, float]] = {}
    for line in lines(path):
        label, started, ended = line.split()
        assert label not in found, f"{label} ran twice"
        found[label] = (float(started), float(ended))
    return found


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals that overlap at one moment."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak
