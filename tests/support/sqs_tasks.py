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
