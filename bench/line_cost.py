"""The CPU of one log line, rendered and written: the template's against two references.

Each variant runs in a fresh interpreter (logging configurations are process-wide), writes
``lines`` lines into ``os.devnull`` per round, ``rounds`` times, and reports the CPU per line
(``time.process_time``; other processes on the machine slow no side):

- the template: a ``task.succeeded`` line as the runner logs it, through ``configure_logging``'s
  pipeline, with a request's ``request_id`` and ``trace_id`` bound, as in a request; counted by
  the metrics processor (Prometheus, as in a container), and not (``METRICS=off``): the line alone;
- uvicorn's access line, through uvicorn's own logging configuration (``LOGGING_CONFIG``);
- structlog's fastest configuration (structlog's "Performance" documentation): a filtering bound
  logger, cached, ``BytesLoggerFactory``, orjson, only the processors the same line needs.

Run alone: ``python -m bench.line_cost`` (prints the table).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.env import PYTHON, ROOT, child_env
from bench.model import Table, fmt, median

TEMPLATE = "template: a task.succeeded line (configure_logging), counted (METRICS=prometheus)"
TEMPLATE_UNCOUNTED = "template: the same line, not counted (METRICS=off)"
UVICORN = "uvicorn's access line (its LOGGING_CONFIG)"
STRUCTLOG = "structlog's fastest configuration (BytesLoggerFactory, orjson)"
VARIANTS = (TEMPLATE, TEMPLATE_UNCOUNTED, UVICORN, STRUCTLOG)

FIELDS = {
    "task": "notifications.write_notification",
    "task_id": "5de1c737b1f541aa8f0588f1687e1a60",
    "backend": "inline",
    "attempt": 1,
    "started_at": "2026-12-07T13:42:00.123456Z",
    "wait_ms": 0.412,
    "duration_ms": 0.087,
}


def _template() -> Callable[[], None]:
    import structlog

    from shared.logs import configure_logging, get_logger

    configure_logging("notifications", stream=open(os.devnull, "w"))  # noqa: SIM115 (for the process's life)
    structlog.contextvars.bind_contextvars(  # what the request id middleware binds
        request_id="5de1c737b1f541aa8f0588f1687e1a60",
        trace_id="5759e988bd862e3fe1be46a994272793",
        service="notifications",
    )
    log = get_logger("shared.background")
    fields = dict(FIELDS)

    def line() -> None:
        log.info("task.succeeded", **fields)

    return line


def _uvicorn() -> Callable[[], None]:
    import logging.config

    from uvicorn.config import LOGGING_CONFIG

    config = json.loads(json.dumps(LOGGING_CONFIG))
    for handler in config["handlers"].values():
        handler["stream"] = "ext://bench.line_cost.DEVNULL"
    logging.config.dictConfig(config)
    access = logging.getLogger("uvicorn.access")
    args = ("127.0.0.1:50000", "POST", "/send-notification/jane.doe%40example.com", "1.1", 200)

    def line() -> None:
        access.info('%s - "%s %s HTTP/%s" %d', *args, extra={"status_code": 200})

    return line


def _structlog() -> Callable[[], None]:
    import logging

    import orjson
    import structlog

    structlog.configure(
        cache_logger_on_first_use=True,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        logger_factory=structlog.BytesLoggerFactory(open(os.devnull, "wb")),  # noqa: SIM115
    )
    structlog.contextvars.bind_contextvars(
        request_id="5de1c737b1f541aa8f0588f1687e1a60", trace_id="5759e988bd862e3fe1be46a994272793"
    )
    log = structlog.get_logger("shared.background")
    fields = dict(FIELDS)

    def line() -> None:
        log.info("task.succeeded", service="notifications", **fields)

    return line


DEVNULL = open(os.devnull, "w")  # noqa: SIM115 (uvicorn's handlers' stream, by dotted name)


def child(variant: str, lines: int, rounds: int) -> list[float]:
    """CPU microseconds per line, one value per round."""
    make = {TEMPLATE: _template, TEMPLATE_UNCOUNTED: _template, UVICORN: _uvicorn, STRUCTLOG: _structlog}[variant]
    line = make()
    for _ in range(max(lines // 10, 100)):
        line()
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(lines):
            line()
        samples.append((time.process_time() - started) / lines * 1e6)
    return samples


def measure(workdir: Path, lines: int = 20_000, rounds: int = 7) -> dict[str, list[float]]:
    """Every variant in its own interpreter: CPU microseconds per line, per round."""
    results = {}
    for variant in VARIANTS:
        code = f"import json, bench.line_cost as m; print(json.dumps(m.child({variant!r}, {lines}, {rounds})))"
        out = subprocess.run(  # noqa: S603 (this interpreter, this module)
            [PYTHON, "-c", code],
            cwd=ROOT,
            env=child_env(workdir, LOG_LEVEL="INFO", METRICS="off" if variant == TEMPLATE_UNCOUNTED else "prometheus"),
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


def table(results: dict[str, list[float]], lines: int, rounds: int) -> Table:
    rows = Table(
        f"One log line, rendered and written to os.devnull (CPU us per line; median of {rounds} rounds of {lines:,})",
        ["line", "median us", "min us", "vs structlog's fastest"],
    )
    fastest = median(results[STRUCTLOG])
    for variant, samples in results.items():
        rows.rows.append([variant, fmt(median(samples), 2), fmt(min(samples), 2), f"{median(samples) / fastest:.2f}x"])
    return rows


def note(results: dict[str, list[float]]) -> str:
    counted, alone = median(results[TEMPLATE]), median(results[TEMPLATE_UNCOUNTED])
    return (
        f"A task line costs {fmt(alone, 1)} us rendered and written ({fmt(alone / median(results[STRUCTLOG]), 2)}x "
        f"structlog's fastest configuration, {fmt(alone / median(results[UVICORN]), 2)}x uvicorn's access line); "
        f"counting it (the metrics processor: counter, duration histogram, in-flight gauge) adds "
        f"{fmt(counted - alone, 1)} us. At INFO a task writes two lines (task.queued, its end); task.started "
        "(DEBUG) is counted without being rendered."
    )


def main() -> None:
    import tempfile

    lines, rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000, 7
    with tempfile.TemporaryDirectory(prefix="bench-lines-") as scratch:
        results = measure(Path(scratch), lines, rounds)
    print(table(results, lines, rounds).markdown())
    print(note(results))


if __name__ == "__main__":
    main()
