"""Tasks for the handoff tests and bench, registered on import (the worker's TASK_MODULES).

Each appends ``started <label>`` and ``done <label>`` to the file it is given, so a test
counts, across the API process and the worker, how many times each task completed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from shared.background import task


def append(path: str, line: str) -> None:
    with Path(path).open("a") as file:
        file.write(line + "\n")


async def _work(path: str, label: str, seconds: float) -> None:
    append(path, f"started {label}")
    await asyncio.sleep(seconds)
    append(path, f"done {label}")


@task("tests.handoff.work", timeout=1.0)
async def work(path: str, label: str, seconds: float) -> None:
    """Expected to take up to 1 s: handed off when less than that is left."""
    await _work(path, label, seconds)


@task("tests.handoff.slow", timeout=5.0)
def slow(path: str, label: str, seconds: float) -> None:
    """A sync task of ``seconds`` declaring up to 5 s: its thread cannot be stopped, only handed off."""
    append(path, f"started {label}")
    time.sleep(seconds)
    append(path, f"done {label}")


@task("tests.handoff.resumable", timeout=60.0)
async def resumable(path: str, label: str, gate: str) -> None:
    """Runs until the file ``gate`` exists; safe to run again from the start."""
    append(path, f"started {label}")
    while not Path(gate).exists():  # noqa: ASYNC110, ASYNC240 (the gate is a file another process creates)
        await asyncio.sleep(0.01)
    append(path, f"done {label}")


@task("tests.handoff.fragile", timeout=60.0, at_most_once=True)
async def fragile(path: str, label: str, gate: str) -> None:
    """Like ``resumable``, but declared at-most-once: never handed off once started."""
    append(path, f"started {label}")
    while not Path(gate).exists():  # noqa: ASYNC110, ASYNC240 (the gate is a file another process creates)
        await asyncio.sleep(0.01)
    append(path, f"done {label}")


async def plain(path: str, label: str, seconds: float) -> None:
    """Not registered: it cannot be named outside this process, so it cannot be handed off."""
    await _work(path, label, seconds)


def completions(path: Path) -> dict[str, int]:
    """How many times each label completed."""
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("done "):
            counts[line[5:]] = counts.get(line[5:], 0) + 1
    return counts
