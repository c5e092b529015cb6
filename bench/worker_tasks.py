"""The worker section's tasks (``bench.worker``), registered on import (its TASK_MODULES)."""

from __future__ import annotations

import asyncio
import hashlib
import time

from shared.background import task

WAIT_S = 0.1
"""What an I/O-bound task waits: a call to SES, S3 or DynamoDB, about."""

CPU_ROUNDS = 5_000
"""sha256 rounds of a CPU-bound task: about 20 ms of CPU on a 2-CPU machine (small inputs: hashlib keeps the GIL)."""


@task("bench.worker.wait")
async def wait() -> None:
    """I/O-bound, ``async def``: awaits, as a call through an async client does."""
    await asyncio.sleep(WAIT_S)


@task("bench.worker.block")
def block() -> None:
    """I/O-bound, ``def``: blocks its thread, as a call through boto3 does."""
    time.sleep(WAIT_S)


@task("bench.worker.compute")
def compute() -> None:
    """CPU-bound, ``def``: holds the GIL throughout."""
    digest = b""
    for _ in range(CPU_ROUNDS):
        digest = hashlib.sha256(digest).digest()
