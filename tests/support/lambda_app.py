"""A function for the Lambda tests: slow, gated, failing and deadline-crossing tasks.

Run by the real runtime client (``tests.support.lambda_app.handler``); each task
appends a line to the notification log, the side effect the tests check.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import structlog
from fastapi import BackgroundTasks

from shared.app import create_app
from shared.background import task
from shared.background.lambda_extension import LambdaExtensionBackend
from shared.lambda_handler import make_handler
from shared.logs import get_logger
from shared.tasks import notification_log

app = create_app("lambda-test")
log = get_logger("tests.lambda_app")


@task("lambda_test.slow")
async def slow(label: str, seconds: float) -> None:
    await asyncio.sleep(seconds)
    notification_log.append(f"slow {label}\n")


@task("lambda_test.gated")
async def gated(label: str, gate: str) -> None:
    """Finishes only once the test created the file ``gate``."""
    while not Path(gate).exists():
        await asyncio.sleep(0.01)
    notification_log.append(f"gated {label}\n")


@task("lambda_test.blocking")
def blocking(label: str, seconds: float) -> None:
    """A sync task: past the deadline it cannot be stopped; the process ends instead."""
    time.sleep(seconds)
    notification_log.append(f"blocking {label}\n")


@task("lambda_test.overrunning", timeout=0.5)
def overrunning(label: str, seconds: float) -> None:
    """A sync task declaring 0.5 s that takes ``seconds``: reported overrunning, then its real end."""
    time.sleep(seconds)
    notification_log.append(f"overrunning {label}\n")


@task("lambda_test.fail")
def fail(label: str) -> None:
    raise ValueError(f"task failed on purpose ({label})")


@task("lambda_test.record")
def record(label: str) -> None:
    notification_log.append(f"record {label}\n")
    log.info("lambda_test.recorded", label=label, thread=threading.current_thread().name)


@task("lambda_test.record_in_own_loop")
def record_in_own_loop(label: str) -> None:
    """A sync task as some wrap async code: its own event loop (``asyncio.run``), a key bound for its lines."""
    structlog.contextvars.bind_contextvars(bound_by_task=label)

    async def append() -> None:
        notification_log.append(f"own loop {label}\n")

    asyncio.run(append())
    log.info("lambda_test.recorded", label=label, thread=threading.current_thread().name)


@task("lambda_test.maybe_fail")
def maybe_fail(label: str, fail: bool) -> None:
    if fail:
        raise ValueError(f"task failed on purpose ({label})")
    notification_log.append(f"maybe_fail {label}\n")


@app.post("/slow/{label}")
async def post_slow(label: str, background_tasks: BackgroundTasks, seconds: float = 0.5) -> dict[str, str]:
    background_tasks.add_task(slow, label, seconds)
    return {"queued": label}


@app.post("/gated/{label}")
async def post_gated(label: str, gate: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(gated, label, gate)
    return {"queued": label}


@app.post("/blocking/{label}")
async def post_blocking(
    label: str, background_tasks: BackgroundTasks, seconds: float = 5.0, then_record: bool = True
) -> dict[str, str]:
    background_tasks.add_task(blocking, label, seconds)
    if then_record:
        background_tasks.add_task(record, label)
    return {"queued": label}


@app.post("/records/{label}")
async def post_records(label: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    """Two sync tasks: the first in the thread pool, the last on the runner thread."""
    background_tasks.add_task(record, f"{label}-first")
    background_tasks.add_task(record_in_own_loop, f"{label}-last")
    return {"queued": label}


@app.post("/overrunning/{label}")
async def post_overrunning(label: str, background_tasks: BackgroundTasks, seconds: float = 1.0) -> dict[str, str]:
    background_tasks.add_task(overrunning, label, seconds)
    background_tasks.add_task(record, label)
    return {"queued": label}


@app.post("/fail/{label}")
async def post_fail(label: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(fail, label)
    background_tasks.add_task(record, label)
    return {"queued": label}


@app.post("/one-fails/{label}")
async def post_one_fails(label: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    """Two runs of one task (one metric set), the first failing."""
    background_tasks.add_task(maybe_fail, label, True)
    background_tasks.add_task(maybe_fail, label, False)
    return {"queued": label}


@app.post("/defer/{label}")
async def post_defer(label: str) -> dict[str, str]:
    """What another backend does: hand a job to the extension, to run after the response."""

    async def job() -> None:
        await asyncio.sleep(0.5)
        notification_log.append(f"deferred {label}\n")
        log.info("lambda_test.deferred_ran", label=label)

    await LambdaExtensionBackend.get().defer(job, label="lambda_test.deferred")
    return {"deferred": label}


handler = make_handler(app)
