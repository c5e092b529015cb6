"""The worker: how long a batch of ten tasks holds it, one at a time and side by side.

A batch is what Lambda gives the worker function (ten messages, the event source mapping's
batch size) and what one long poll gives the container worker. Its time in ``Worker.handle``
is what Lambda bills for the invocation. Three kinds of task: I/O-bound ``async def`` (awaits
100 ms), I/O-bound ``def`` (blocks its thread 100 ms, as boto3 does) and CPU-bound ``def``
(``bench.worker_tasks``); each at ``WORKER_CONCURRENCY=1`` (one at a time, as the worker ran
before it had the setting) and at the default. SQS and the idempotency table (DynamoDB) are
moto's server, in a process of its own on 127.0.0.1; the worker runs in a child process, its
log lines written to a file as they would be to CloudWatch, and checked by
``infra.lifecycle_check``. Variants take turns, round after round.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any
from unittest import mock

from bench.env import PYTHON, ROOT, SAFE_ENV, child_env, progress
from bench.model import Section, Table, Target, fmt, fmt_ratio, median, percentile
from infra.durable_resources import create_idempotency_table, create_task_queues
from infra.lifecycle_check import orphans
from infra.servers import ServerProcess, free_port, wait_until_healthy
from shared import aws
from shared.background.registry import lookup
from shared.background.sqs import SqsBackend
from shared.background.task import QueuedTask
from shared.logs import configure_logging
from shared.settings import get_settings
from shared.worker import Worker
from shared.worker.poller import lambda_record

BATCH = 10
TABLE = "bench-worker-idempotency"
KINDS = {
    "wait": ("I/O-bound, `async def`, 100 ms `await`", "bench.worker.wait"),
    "block": ("I/O-bound, `def`, 100 ms blocking call", "bench.worker.block"),
    "compute": ("CPU-bound, `def`, about 20 ms of CPU", "bench.worker.compute"),
}
IO_TARGET_S = 0.3
CPU_TOLERANCE = 1.1
"""CPU-bound side by side against one at a time: within 10% (run-to-run noise on a shared machine)."""


# --- the child: moto's server, the worker, the batches -------------------------------------------


class _Context:
    """A Lambda context with time enough: the batch's deadline never matters here."""

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


def _receive(queue_url: str, count: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while len(messages) < count:
        response = aws.sqs().receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=count - len(messages),
            WaitTimeSeconds=1,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            MessageAttributeNames=["All"],
        )
        messages.extend(response.get("Messages", []))  # type: ignore[arg-type]
    return messages


def _batch_seconds(worker: Worker, queue_url: str, queue_arn: str, task_name: str) -> float:
    """Queue ten tasks, receive them as one batch, and time the worker's handling of it."""
    func = lookup(task_name)
    asyncio.run(SqsBackend.from_settings().dispatch([QueuedTask(func, (), {}, task_name) for _ in range(BATCH)]))
    event = {"Records": [lambda_record(m, queue_arn, "us-east-1") for m in _receive(queue_url, BATCH)]}  # type: ignore[arg-type]
    started = time.perf_counter()
    response = worker.handle(event, _Context())
    elapsed = time.perf_counter() - started
    if response["batchItemFailures"]:
        raise RuntimeError(f"{task_name}: {len(response['batchItemFailures'])} messages failed")
    return elapsed


def run(workdir: str, rounds: int, endpoint: str, queue_url: str, queue_arn: str) -> dict[str, Any]:
    """In the child: every variant's batch times, in seconds, round after round."""
    log_path = Path(workdir) / "worker-bench.log"
    with log_path.open("w") as log:
        configure_logging("worker", stream=log)
        default = get_settings().worker_concurrency
        workers = {1: Worker(concurrency=1), default: Worker(concurrency=default)}
        samples: dict[str, list[float]] = {f"{kind}@{c}": [] for kind in KINDS for c in workers}
        try:
            for round_ in range(rounds + 1):  # round 0 warms up: first clients, first imports
                for kind, (_, task_name) in KINDS.items():
                    for concurrency, worker in workers.items():
                        seconds = _batch_seconds(worker, queue_url, queue_arn, task_name)
                        if round_:
                            samples[f"{kind}@{concurrency}"].append(seconds)
        finally:
            for worker in workers.values():
                worker.close()
    with log_path.open() as log:
        found = orphans([log])
    return {"default": default, "samples": samples, "orphans": found}


# --- the parent: moto's server, the child, the report section ------------------------------------


def measure(workdir: Path, rounds: int = 5) -> Section:
    progress(f"worker: {rounds} rounds of {len(KINDS)} kinds x 2 concurrencies, batches of {BATCH}, moto's server")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = ServerProcess([PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], child_env(workdir), port)
    env = child_env(workdir, AWS_ENDPOINT_URL=endpoint)
    try:
        wait_until_healthy(f"{endpoint}/moto-api/", moto.process)
        # This process's clients aimed at moto while it creates the queue and the table.
        with mock.patch.dict(os.environ, {name: env[name] for name in [*SAFE_ENV, "AWS_ENDPOINT_URL"]}):
            get_settings.cache_clear()
            aws.reset_clients()
            queues = create_task_queues("bench-worker", max_receives=5, visibility_timeout=300)
            create_idempotency_table(TABLE)
        code = (
            "import json, bench.worker as worker\n"
            f"print(json.dumps(worker.run({str(workdir)!r}, {rounds}, {endpoint!r}, {queues.url!r}, {queues.arn!r})))\n"
        )
        env.update(TASK_QUEUE_URL=queues.url, IDEMPOTENCY_TABLE=TABLE, TASK_MODULES="bench.worker_tasks")
        completed = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
            [PYTHON, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
        )
    finally:
        moto.close()
        aws.reset_clients()
        get_settings.cache_clear()
    if completed.returncode != 0:
        raise RuntimeError(f"bench.worker failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    numbers: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return section(int(numbers["default"]), numbers["samples"], numbers["orphans"])


def section(default: int, samples: dict[str, list[float]], orphaned: list[str]) -> Section:
    def batch_ms(kind: str, concurrency: int) -> list[float]:
        return [seconds * 1000 for seconds in samples[f"{kind}@{concurrency}"]]

    table = Table(
        f"A batch of {BATCH} tasks in `Worker.handle` (billed time of one Lambda invocation)",
        ["tasks", "WORKER_CONCURRENCY", "n", "batch median (ms)", "p95 (ms)", "tasks/s", "vs one at a time"],
    )
    for kind, (label, _) in KINDS.items():
        one = median(batch_ms(kind, 1))
        for concurrency in (1, default):
            ms = batch_ms(kind, concurrency)
            table.rows.append(
                [
                    label,
                    f"{concurrency}{' (default)' if concurrency == default else ''}",
                    str(len(ms)),
                    fmt(median(ms)),
                    fmt(percentile(ms, 95)),
                    fmt(BATCH / (median(ms) / 1000)),
                    "baseline" if concurrency == 1 else fmt_ratio(median(ms) / one),
                ]
            )
    io_ms = median(batch_ms("wait", default))
    cpu_one, cpu_many = median(batch_ms("compute", 1)), median(batch_ms("compute", default))
    targets = [
        Target(
            "(8) worker: a batch of ten 100 ms I/O-bound tasks",
            f"<= {IO_TARGET_S} s at the default WORKER_CONCURRENCY ({default}); one at a time takes about 1 s",
            f"{io_ms / 1000:.3f} s (one at a time {median(batch_ms('wait', 1)) / 1000:.3f} s; "
            f"`def` tasks {median(batch_ms('block', default)) / 1000:.3f} s)",
            io_ms / 1000 <= IO_TARGET_S,
            "the ten `await`s overlap on the batch's event loop (a `def` task's wait in a thread of its own); "
            "what is left is the idempotency table's two calls per message and the log lines",
        ),
        Target(
            "(8) worker: a batch of ten CPU-bound tasks",
            f"no slower than one at a time (<= {CPU_TOLERANCE}x, run-to-run noise)",
            f"{fmt_ratio(cpu_many / cpu_one)} ({fmt(cpu_many)} vs {fmt(cpu_one)} ms)",
            cpu_many / cpu_one <= CPU_TOLERANCE,
            "one GIL: CPU-bound threads take turns, so side by side buys nothing and costs little; "
            "more CPU needs more processes (or a bigger Lambda memory size)",
        ),
    ]
    notes = [
        f"{len(orphaned)} orphans in the worker's log (python -m infra.lifecycle_check)"
        + (f": {'; '.join(orphaned[:3])}" if orphaned else ""),
        "The idempotency store's calls (moto's DynamoDB on 127.0.0.1) are in every message's time; on AWS "
        "they take a few milliseconds each, side by side as here.",
    ]
    return Section(
        key="worker",
        title="8. Worker: a batch one at a time and side by side (WORKER_CONCURRENCY)",
        intro=(
            f"A batch of {BATCH} task messages, as Lambda gives the worker function (the event source mapping's "
            "batch size) and one long poll the container worker; its time in `Worker.handle` is what Lambda bills "
            "for the invocation. Each kind of task at `WORKER_CONCURRENCY=1` (one at a time, as the worker ran "
            f"before the setting) and at the default ({default}); variants take turns, round after round. SQS and "
            "the idempotency table are moto's server in a process of its own on 127.0.0.1; the worker runs in a "
            "child process, its log lines written to a file and checked by `infra.lifecycle_check`."
        ),
        tables=[table],
        notes=notes,
        targets=targets,
    )
