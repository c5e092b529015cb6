"""`make run`, as a user runs it: one request through each function, each background effect
seen landing in the local AWS (moto's server) or the notification log, then Ctrl-C.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import boto3
import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from shared.settings import Settings
from tests.support.logs import parse_json_lines
from tests.support.sam import ROOT, function_folders
from tests.support.servers import eventually, free_port

T = TypeVar("T")


class Stack:
    """``make run`` in its own process group, its output in a file."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port, self.aws_port, self.metrics_port = int(env["PORT"]), int(env["AWS_PORT"]), int(env["METRICS_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.aws_url = f"http://127.0.0.1:{self.aws_port}"
        self._output = tempfile.NamedTemporaryFile(prefix="make-run-", suffix=".log", delete=False)  # noqa: SIM115
        # -o: the suite's .venv is installed already; a user's `make run` would install it first.
        self.process = subprocess.Popen(
            ["make", "--no-print-directory", "-o", ".venv/.installed", "run"],
            cwd=ROOT,
            env=env,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return Path(self._output.name).read_text(errors="replace")

    def child_pids(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"local_stack: started \w+ \(pid (\d+)\)", self.output())]

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while "Local stack running" not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"make run did not start:\n{self.output()}")
            time.sleep(0.2)

    def ctrl_c(self, timeout: float = 90.0) -> None:
        """What a terminal does on Ctrl-C: SIGINT to the foreground process group."""
        os.killpg(self.process.pid, signal.SIGINT)
        self.process.wait(timeout)

    def close(self) -> None:
        """After a failure: kill make's group, then the stack's children (in their own sessions)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        for pid in self.child_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._output.close()
        os.unlink(self._output.name)

    def aws(self, service: str) -> Any:
        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.aws_url,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )


@pytest.fixture
def stack(isolated_settings: Path) -> Iterator[Stack]:
    env = {
        **os.environ,
        "PORT": str(free_port()),
        "AWS_PORT": str(free_port()),
        "METRICS_PORT": str(free_port()),
        "NOTIFICATION_LOG_PATH": str(isolated_settings),
    }
    for key in ("FUNCTION", "DURABLE_TASKS", "TASK_QUEUE_URL", "AWS_ENDPOINT_URL", "API_ROOT_PATH"):
        env.pop(key, None)
    running = Stack(env)
    try:
        running.wait_ready()
        yield running
    finally:
        print(running.output())  # pytest shows it when the test failed
        running.close()


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 144, 255)).save(buffer, "PNG")
    return buffer.getvalue()


def test_make_run_serves_every_function_and_runs_their_background_work(stack: Stack, isolated_settings: Path) -> None:
    settings = Settings()
    output = stack.output()
    for name in function_folders():
        assert f"{stack.url}/{name}   docs: {stack.url}/{name}/docs" in output
    assert f"{stack.aws_url}/moto-api/" in output
    http = httpx.Client(base_url=stack.url, timeout=30)

    # notifications: the tutorial's task writes the notification log after the response.
    response = http.post("/notifications/send-notification/foo@example.com")
    assert response.json() == {"message": "Notification sent in the background"}
    logged = eventually(lambda: isolated_settings.exists() and isolated_settings.read_text())
    assert logged == "notification for foo@example.com: some notification\n"

    # users: the welcome e-mail goes through SQS to the worker, which sends it with SES.
    response = http.post("/users/users", json={"name": "Ada Lovelace", "email": "ada@example.com"})
    assert response.status_code == 201, response.text
    user_id = response.json()["id"]
    ses = stack.aws("ses")
    eventually(lambda: ses.get_send_quota()["SentLast24Hours"] >= 1)
    dynamodb = stack.aws("dynamodb")
    audit = eventually(
        lambda: dynamodb.query(
            TableName=settings.audit_table,
            KeyConditionExpression="subject = :s",
            ExpressionAttributeValues={":s": {"S": f"user#{user_id}"}},
        )["Items"]
    )
    assert [record["action"]["S"] for record in audit] == ["user.registered"]

    # items: the search index is updated in the background, then answers the search.
    response = http.post("/items/items", json={"name": "Blue ceramic mug", "tags": ["kitchen"]})
    assert response.status_code == 201, response.text
    item_id = response.json()["id"]
    hits = eventually(lambda: http.get("/items/items/search", params={"q": "mug"}).json()["results"])
    assert [hit["id"] for hit in hits] == [item_id]

    # uploads: stored at once (202), processed by the worker: facts and thumbnails in S3.
    response = http.post("/uploads/uploads", files={"file": ("blue.png", png(), "image/png")})
    assert response.status_code == 202, response.text
    status_url = response.json()["status_url"]
    assert status_url.startswith(f"{stack.url}/uploads/uploads/")
    upload = eventually(lambda: (r := http.get(status_url).json())["status"] == "processed" and r)
    assert upload["facts"]["content_type"] == "image/png"
    keys = {o["Key"] for o in stack.aws("s3").list_objects_v2(Bucket=settings.uploads_bucket)["Contents"]}
    assert set(upload["thumbnails"]) <= keys
    assert len(upload["thumbnails"]) == len(settings.thumbnail_sizes)

    # worker: its own endpoints report the drained queue and its dead-letter queue.
    queue = http.get("/worker/queue").json()
    assert queue["queue"]["visible"] == 0
    assert queue["dead_letter_queue"]["visible"] == 0

    # metrics: the banner names both /metrics; the functions count the send, the worker the run.
    worker_metrics = f"http://127.0.0.1:{stack.metrics_port}/metrics"
    assert f"{stack.url}/metrics" in output and worker_metrics in output
    welcome = {"task": "email.send_welcome", "backend": "sqs"}
    api_samples = metric_samples(http.get("/metrics").text)
    assert (
        api_samples[
            ("tasks_enqueued_total", (("backend", "sqs"), ("service", "users"), ("task", "email.send_welcome")))
        ]
        == 1
    )
    worker_samples = metric_samples(httpx.get(worker_metrics, timeout=10).text)
    labels = tuple(sorted({**welcome, "service": "worker"}.items()))
    assert worker_samples[("tasks_succeeded_total", labels)] == 1
    assert worker_samples[("task_duration_seconds_count", labels)] == 1

    # Ctrl-C stops everything: the worker, the functions' server, moto.
    stack.ctrl_c()
    assert "local_stack: stopped" in stack.output()
    assert any(event["event"] == "worker.stopped" for event in parse_json_lines(stack.output()))
    assert not port_open(stack.port)
    assert not port_open(stack.aws_port)
    assert not port_open(stack.metrics_port)
    assert len(stack.child_pids()) == 2
    for pid in stack.child_pids():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
