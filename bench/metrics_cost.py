"""Measurement 6: what task metrics and trace ids cost (issue targets: import < 5 ms on Lambda, < 5% per request).

- Import: in fresh interpreters, with what every function imports anyway already loaded
  (structlog, orjson, ``shared.settings``, ``shared.logs``), the time to import the Lambda
  metrics path: ``shared.metrics`` (with ``shared.tracing`` and the names) and
  ``shared.metrics.emf``. prometheus-client is never imported on Lambda (checked by a test).
- Per request: in-process ASGI calls of ``POST /send-notification/{email}`` (notifications,
  one task: four task events counted), CPU time, variants interleaved: the metrics hook
  replaced by a no-op (what the task layer cost before metrics), the EMF recorder flushed
  after every request (into ``os.devnull``, as one Lambda invocation), and prometheus-client.
  The request's trace (``traceparent`` parsing, the ``trace_id`` binding) runs in every
  variant; its cost is timed on its own and added to each overhead.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.env import ROOT
from bench.model import Section, Table, Target, fmt, median, percentile
from bench.task_overhead import EMAIL_PATH, _asgi
from infra.paths import shown
from shared.logs import configure_logging
from shared.settings import get_settings

if TYPE_CHECKING:
    from shared.metrics import Recorder

IMPORT_TARGET_MS = 5.0
REQUEST_TARGET = 0.05
_IMPORT_PROBE = (
    "import time, structlog, orjson, shared.settings, shared.logs\n"
    "started = time.perf_counter()\n"
    "import shared.metrics, shared.metrics.emf\n"
    "elapsed = time.perf_counter() - started\n"
    "import sys\n"
    "assert 'prometheus_client' not in sys.modules\n"
    "print(elapsed * 1000)\n"
)
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

Runner = Callable[[int], Awaitable[None]]


def import_ms(repetitions: int) -> list[float]:
    env = {**os.environ, "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9", "PYTHONPATH": str(ROOT)}
    samples = []
    for _ in range(repetitions):
        command = [sys.executable, "-c", _IMPORT_PROBE]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)  # noqa: S603 - our own interpreter, fixed arguments
        samples.append(float(result.stdout.strip().splitlines()[-1]))
    return samples


def trace_us(iterations: int = 20_000) -> float:
    """One request's trace: read ``traceparent`` from the headers, bind ``trace_id``, unbind."""
    from shared import tracing

    headers = [(b"host", b"127.0.0.1"), (b"content-length", b"0"), (b"traceparent", TRACEPARENT)]
    started = time.process_time()
    for _ in range(iterations):
        tracing.deactivate(tracing.activate(tracing.for_scope({"headers": headers})))
    return (time.process_time() - started) / iterations * 1e6


def hook_us(recorder: Recorder, flush: bool, iterations: int = 20_000) -> float:
    """The metrics hook of one request with one task, alone: its three task events, then the flush."""
    import structlog

    from shared import metrics

    count = metrics.count_task_events  # the log pipeline's first processor
    fields = {"task": "notifications.write_notification", "task_id": "0" * 32, "backend": "inline", "attempt": 1}
    saved, metrics._recorder = metrics._recorder, recorder
    with structlog.contextvars.bound_contextvars(service="notifications", request_id="1" * 32, trace_id="2" * 32):
        started = time.process_time()
        for _ in range(iterations):
            count(None, "info", {"event": "task.queued", **fields})
            count(None, "info", {"event": "task.started", **fields})
            count(None, "info", {"event": "task.succeeded", **fields, "duration_ms": 1.25})
            if flush:
                recorder.flush()
        elapsed = time.process_time() - started
    metrics._recorder = saved
    return elapsed / iterations * 1e6


def _with_flush(runner: Runner, flush: Callable[[], None]) -> Runner:
    async def run(requests: int) -> None:
        for _ in range(requests):
            await runner(1)
            flush()

    return run


async def _measure(
    variants: dict[str, tuple[Callable[[], None], Runner]], requests: int, rounds: int
) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {label: [] for label in variants}
    for select, runner in variants.values():
        select()
        await runner(max(requests // 10, 10))
    for round_index in range(rounds):
        labels = list(variants) if round_index % 2 == 0 else list(variants)[::-1]
        for label in labels:
            select, runner = variants[label]
            select()
            gc.collect()
            started = time.process_time()
            await runner(requests)
            samples[label].append((time.process_time() - started) / requests * 1e6)
    return samples


NO_HOOK = "no metrics hook (the task layer before metrics)"
EMF = "EMF recorder, flushed after each request (Lambda)"
PROMETHEUS = "prometheus-client (containers)"


def measure(
    workdir: Path,
    requests: int = 500,
    rounds: int = 7,
    import_repetitions: int = 15,
    server_cpu_us: float | None = None,
) -> Section:
    """``server_cpu_us``: section 2's server CPU per request (uvicorn, cheap task), the denominator when known.

    The requests are timed in a child process: earlier measurements of ``make bench`` leave this
    one's loggers bound to the streams they configured (and closed).
    """
    imports = import_ms(import_repetitions)
    command = [sys.executable, "-m", "bench.metrics_cost", str(workdir), str(requests), str(rounds)]
    completed = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"bench.metrics_cost failed:\n{completed.stderr[-3000:]}")
    measured = json.loads(completed.stdout.strip().splitlines()[-1])
    return _section(
        imports,
        measured["samples"],
        measured["hooks"],
        measured["trace_us"],
        requests,
        rounds,
        server_cpu_us,
    )


def in_process(workdir: Path, requests: int, rounds: int) -> dict[str, Any]:
    """The whole-request variants, the hook alone and the trace alone, in this process."""
    os.environ["LOG_FORMAT"] = "json"
    os.environ["NOTIFICATION_LOG_PATH"] = str(workdir / "metrics-notifications.log")
    get_settings.cache_clear()
    import shared.metrics as metrics_module
    from shared.metrics.emf import EmfRecorder
    from shared.metrics.prometheus import PrometheusRecorder

    devnull = open(os.devnull, "w")  # noqa: SIM115 (lives as long as logging)
    configure_logging("bench", stream=devnull)
    from functions.notifications.app import app as notifications

    record = metrics_module.record
    emf = EmfRecorder("bench", devnull)
    prometheus = PrometheusRecorder.get()

    def no_hook(event: str, fields: Mapping[str, Any]) -> None:
        return None

    def select(recorder: Recorder | None) -> Callable[[], None]:
        def apply() -> None:
            metrics_module.record = record if recorder is not None else no_hook
            metrics_module._recorder = recorder

        return apply

    runner = _asgi(notifications)
    variants = {
        NO_HOOK: (select(None), runner),
        EMF: (select(emf), _with_flush(runner, emf.flush)),
        PROMETHEUS: (select(prometheus), runner),
    }
    samples = asyncio.run(_measure(variants, requests, rounds))
    metrics_module.record = record
    metrics_module._recorder = None
    return {
        "samples": samples,
        "hooks": {EMF: hook_us(emf, flush=True), PROMETHEUS: hook_us(prometheus, flush=False)},
        "trace_us": trace_us(),
    }


def _section(
    imports: list[float],
    samples: dict[str, list[float]],
    hooks: dict[str, float],
    trace_cost: float,
    requests: int,
    rounds: int,
    server_cpu_us: float | None,
) -> Section:
    base = median(samples[NO_HOOK])
    table = Table(
        f"Whole request, in-process ASGI call of `POST {EMAIL_PATH}` (CPU microseconds)",
        [
            "variant",
            "median us",
            "p95 us",
            "difference to no hook, us (noisy)",
            "metrics hook alone, us",
            "hook + trace id, share of the request",
        ],
    )
    targets = [
        Target(
            "(6a) import of the metrics path on Lambda",
            f"< {IMPORT_TARGET_MS:g} ms",
            f"{fmt(median(imports))} ms (median of {len(imports)} fresh interpreters; "
            f"p95 {fmt(percentile(imports, 95))})",
            median(imports) < IMPORT_TARGET_MS,
            "shared.metrics, shared.tracing, shared.metrics.names and shared.metrics.emf: stdlib, structlog and "
            "orjson only, which every function imports anyway; prometheus-client is not imported on Lambda",
        )
    ]
    for label, values in samples.items():
        hook = hooks.get(label, 0.0)
        share = (hook + trace_cost) / base
        table.rows.append(
            [
                label,
                fmt(median(values), 0),
                fmt(percentile(values, 95), 0),
                "baseline" if label == NO_HOOK else fmt(median(values) - base, 1),
                "" if label == NO_HOOK else fmt(hook, 1),
                f"{fmt(trace_cost / base * 100, 2)}% (trace id only)"
                if label == NO_HOOK
                else f"{fmt(share * 100, 1)}%",
            ]
        )
        if label != NO_HOOK:
            cost = hook + trace_cost
            if server_cpu_us:
                # Section 2's server ran with metrics on: today's per-request CPU is that minus this cost.
                judged, of = cost / (server_cpu_us - cost), f"{fmt(server_cpu_us - cost, 0)} us, section 2's server"
            else:
                judged, of = share, f"{fmt(base, 0)} us, the in-process request (section 2 did not run)"
            targets.append(
                Target(
                    f"(6b) per-request overhead, {label.split(',')[0].split(' (')[0]}",
                    f"< {REQUEST_TARGET:.0%} of the per-request CPU",
                    f"{fmt(judged * 100, 1)}% ({fmt(cost, 1)} us of {of}); "
                    f"{fmt(share * 100, 1)}% of the in-process request",
                    judged < REQUEST_TARGET,
                    f"the hook {fmt(hook, 1)} us (three task events counted"
                    f"{', one EMF line rendered and written' if label == EMF else ''}), "
                    f"the trace id {fmt(trace_cost, 1)} us; the whole request with the hook differed from the "
                    f"request without it by {fmt(median(values) - base, 1)} us in this run (noisier)",
                )
            )
    return Section(
        key="metrics",
        title="6. Metrics and trace ids",
        intro=(
            f"Import: {len(imports)} fresh interpreters (`{shown(sys.executable)}`, bytecode cached), with "
            "`AWS_LAMBDA_RUNTIME_API` set. Requests: "
            f"{requests} per round, {rounds} rounds, variants interleaved, one process, logs into os.devnull. "
            "The share is judged on two costs timed alone (20,000 iterations, CPU time), which a difference of two "
            "noisy whole-request medians cannot resolve: the metrics hook of one request (its three task events "
            "through `ObservedLogger`, and for EMF one flush) and the request's trace (traceparent parsed, trace_id "
            f"bound and unbound: {fmt(trace_cost, 2)} us). "
            f"Import samples (ms): median {fmt(statistics.median(imports))}, max {fmt(max(imports))}."
        ),
        tables=[table],
        targets=targets,
        unit="us",
    )


if __name__ == "__main__":
    print(json.dumps(in_process(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))
