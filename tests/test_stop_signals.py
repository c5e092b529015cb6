"""Ctrl-C (SIGINT) and ``docker stop`` (SIGTERM) end the server and the worker cleanly: exit 0, no traceback.

Real processes: ``python -m shared.serve`` under uvicorn, ``python -m shared.worker`` and
``python -m functions.worker`` against moto's server on 127.0.0.1.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from moto.server import ThreadedMotoServer

from infra.durable_resources import create_idempotency_table, create_task_queues
from infra.servers import ServerProcess, free_port, parse_json_lines, start_function
from shared import aws
from shared.settings import get_settings
from tests.support.sqs_queues import TABLE, DurableAws, durable_aws_server, subprocess_env

STOP_SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]


def stop_with(process: ServerProcess, signum: signal.Signals) -> tuple[int, str]:
    """Send ``signum`` once, as Ctrl-C or ``docker stop`` does; the exit code and all the process printed."""
    try:
        process.process.send_signal(signum)
        return process.process.wait(timeout=60), process.output()
    finally:
        process.close()


def events(output: str) -> list[str]:
    return [line["event"] for line in parse_json_lines(output)]


def wait_for(condition: Callable[[], bool], process: ServerProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.process.poll() is not None:
            raise AssertionError(f"exited early with {process.process.returncode}:\n{process.output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout}s:\n{process.output()}")
        time.sleep(0.05)


@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_the_server_stops_cleanly_on_sigint_and_sigterm(signum: signal.Signals) -> None:
    server = start_function("notifications", {"LOG_FORMAT": "json"})
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200

    exit_code, output = stop_with(server, signum)

    assert exit_code == 0, output
    assert "Traceback" not in output
    assert "KeyboardInterrupt" not in output
    assert events(output)[-1].startswith("Finished server process")


@pytest.fixture
def durable(monkeypatch: pytest.MonkeyPatch) -> Iterator[DurableAws]:
    with durable_aws_server(monkeypatch) as resources:
        yield resources


def start_worker(env: dict[str, str], module: str) -> ServerProcess:
    return ServerProcess([sys.executable, "-m", module], {"LOG_FORMAT": "json", "WORKER_WAIT_SECONDS": "1", **env}, 0)


@pytest.mark.parametrize("module", ["shared.worker", "functions.worker"])
@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_the_worker_stops_cleanly_on_sigint_and_sigterm(
    durable: DurableAws, module: str, signum: signal.Signals
) -> None:
    worker = start_worker(subprocess_env(durable), module)
    wait_for(lambda: "worker.started" in events(worker.output()), worker)

    exit_code, output = stop_with(worker, signum)

    assert exit_code == 0, output
    assert "Traceback" not in output
    assert events(output)[-2:] == ["worker.stopping", "worker.stopped"]
    assert parse_json_lines(output)[-2]["signal"] == signum.name


def test_sqs_unreachable_at_start_is_retried_with_backoff_until_it_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listens on the endpoint at first: the worker retries, as after a failed poll, then starts."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    queue_url = f"{endpoint}/123456789012/tests-tasks"
    env = {"AWS_ENDPOINT_URL": endpoint, "TASK_QUEUE_URL": queue_url, "IDEMPOTENCY_TABLE": TABLE}
    worker = start_worker(env, "shared.worker")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    try:
        wait_for(lambda: events(worker.output()).count("worker.start_failed") >= 2, worker)
        server.start()
        httpx.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        get_settings.cache_clear()
        aws.reset_clients()
        assert create_task_queues("tests-tasks", max_receives=3, visibility_timeout=30).url == queue_url
        create_idempotency_table(TABLE)
        wait_for(lambda: "worker.started" in events(worker.output()), worker)
    finally:
        exit_code, output = stop_with(worker, signal.SIGINT)
        aws.reset_clients()
        server.stop()

    assert exit_code == 0, output
    assert "Traceback" not in output
    failures = [line for line in parse_json_lines(output) if line["event"] == "worker.start_failed"]
    assert [line["retry_in_s"] for line in failures[:2]] == [1.0, 2.0], "the poll loop's backoff"
    assert events(output)[-2:] == ["worker.stopping", "worker.stopped"]


def test_sigint_while_sqs_is_unreachable_at_start_stops_the_worker_cleanly() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    env = {"AWS_ENDPOINT_URL": endpoint, "TASK_QUEUE_URL": f"{endpoint}/123456789012/tests-tasks"}
    worker = start_worker(env, "shared.worker")
    wait_for(lambda: "worker.start_failed" in events(worker.output()), worker)

    exit_code, output = stop_with(worker, signal.SIGINT)

    assert exit_code == 0, output
    assert "Traceback" not in output
    assert "worker.started" not in events(output)
    assert events(output)[-2:] == ["worker.stopping", "worker.stopped"]
