"""`make run`, as a user runs it: one request through each function, each background effect
seen landing in the local AWS (moto's server) or the notification log, then Ctrl-C.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import pty
import re
import signal
import socket
import subprocess
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import boto3
import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from infra.lifecycle_check import orphans
from infra.servers import eventually, free_port, parse_json_lines
from shared.settings import Settings
from tests.support import lifecycle
from tests.support.sam import ROOT, function_folders

T = TypeVar("T")


class Stack:
    """``make run`` in its own process group, its output in a file; with ``terminal``, in a session whose
    controlling terminal is a pseudo-terminal, as in a user's shell (Ctrl-C is then the terminal's ^C)."""

    def __init__(self, env: dict[str, str], *, terminal: bool = False) -> None:
        self.port, self.aws_port, self.metrics_port = int(env["PORT"]), int(env["AWS_PORT"]), int(env["METRICS_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.aws_url = f"http://127.0.0.1:{self.aws_port}"
        self._output = tempfile.NamedTemporaryFile(prefix="make-run-", suffix=".log", delete=False)  # noqa: SIM115
        self.output_at_close = ""
        self._terminal: int | None = None
        stdin: int | None = None
        if terminal:
            self._terminal, stdin = pty.openpty()
        # -o: the suite's .venv is installed already; a user's `make run` would install it first.
        self.process = subprocess.Popen(
            ["make", "--no-print-directory", "-o", ".venv/.installed", "run"],
            cwd=ROOT,
            env=env,
            stdin=stdin,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # After setsid: the pseudo-terminal (stdin) becomes the new session's controlling terminal.
            preexec_fn=(lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0)) if terminal else None,
        )
        if stdin is not None:
            os.close(stdin)

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
        """What a terminal does on Ctrl-C: SIGINT to the foreground process group (typed ^C, with ``terminal``)."""
        if self._terminal is not None:
            os.write(self._terminal, b"\x03")
        else:
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
        self.output_at_close = self.output()
        if self._terminal is not None:
            os.close(self._terminal)
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


StackFactory = Callable[..., Stack]


@pytest.fixture
def start_stack(isolated_settings: Path) -> Iterator[StackFactory]:
    """``make run`` with the shell's environment plus ``env``; stopped (and its log checked) after the test."""
    stacks: list[Stack] = []

    def start(terminal: bool = False, **extra: str) -> Stack:
        env = {
            **os.environ,
            "PORT": str(free_port()),
            "AWS_PORT": str(free_port()),
            "METRICS_PORT": str(free_port()),
            "NOTIFICATION_LOG_PATH": str(isolated_settings),
        }
        for key in ("FUNCTION", "DURABLE_TASKS", "TASK_QUEUE_URL", "AWS_ENDPOINT_URL", "API_ROOT_PATH"):
            env.pop(key, None)
        running = Stack({**env, **extra}, terminal=terminal)
        stacks.append(running)
        running.wait_ready()
        return running

    try:
        yield start
    finally:
        for running in stacks:
            print(running.output())  # pytest shows it when the test failed
            running.close()
            lifecycle.record("make run", running.output_at_close)


@pytest.fixture
def stack(start_stack: StackFactory) -> Stack:
    return start_stack()


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
    # ... and its processing task, followed through the gateway to its end on the worker (docs/task-status.md).
    task_url = response.json()["task_url"]
    assert response.headers["link"] == f'<{task_url}>; rel="monitor"'
    assert task_url.startswith(f"{stack.url}/uploads/tasks/")
    task = eventually(lambda: (r := http.get(task_url).json())["done"] and r)
    assert task["state"] == "succeeded" and task["backend"] == "sqs"
    assert task["result"]["thumbnails"] == upload["thumbnails"]

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

    # Ctrl-C stops everything: the worker, the functions' server, moto; the stack exits 0, no traceback.
    # (GNU make then re-raises the SIGINT it got itself: its one "Interrupt" line is make's, for any target.)
    stack.ctrl_c()
    assert "Traceback" not in stack.output()
    assert "local_stack: stopped (exit 0)" in stack.output()
    assert any(event["event"] == "worker.stopped" for event in parse_json_lines(stack.output()))
    assert not port_open(stack.port)
    assert not port_open(stack.aws_port)
    assert not port_open(stack.metrics_port)
    assert len(stack.child_pids()) == 2
    for pid in stack.child_pids():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


class FifoReader:
    """Reads a FIFO in a thread: a task writing to it blocks (in ``open``) until this starts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.text = ""
        self._stopping = False
        self._thread = threading.Thread(target=self._read, daemon=True)

    def start(self) -> FifoReader:
        self._thread.start()
        return self

    def _read(self) -> None:
        while not self._stopping:
            with open(self.path) as reader:  # returns once a writer opened it
                self.text += reader.read()

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):  # no reader waiting: nothing to wake
            os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
        self._thread.join(10)


def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "notifications.fifo"
    os.mkfifo(path)
    return path


def named(stack: Stack, event: str) -> list[dict[str, Any]]:
    return [e for e in parse_json_lines(stack.output()) if e.get("event") == event]


def undrained(output: str) -> list[str]:
    """The lifecycle check's findings: tasks neither ended once, run by the worker nor reported lost."""
    return orphans([output.splitlines()])


@pytest.mark.not_per_function
def test_ctrl_c_stops_the_functions_first_and_the_worker_drains_what_they_handed_off(
    start_stack: StackFactory, tmp_path: Path
) -> None:
    """Tasks handed off during the functions' grace reach a worker that still runs: none left in moto."""
    log = fifo(tmp_path)
    stack = start_stack(NOTIFICATION_LOG_PATH=str(log), SHUTDOWN_GRACE_SECONDS="1", TASK_RUNNING_NOTICE_SECONDS="0.2")
    http = httpx.Client(base_url=stack.url, timeout=30)
    emails = [f"user{index}@example.com" for index in range(3)]
    for email in emails:
        assert http.post(f"/notifications/send-welcome/{email}").status_code == 200
    # Each request's first task blocks on the unread FIFO (task.running says so); its second waits behind it.
    eventually(lambda: len(named(stack, "task.running")) == 3)

    os.killpg(stack.process.pid, signal.SIGINT)
    # The functions' grace ends: every registered task still open is handed off, the blocked running
    # one too (at-least-once), the waiting one behind it.
    eventually(lambda: len(named(stack, "task.handed_off")) == 2 * len(emails), what="the handoffs")
    reader = FifoReader(log).start()  # from now on the writes go through: the worker's too
    try:
        stack.process.wait(90)
    finally:
        reader.stop()

    output = stack.output()
    handed_off = {e["task_id"] for e in named(stack, "task.handed_off")}
    assert len(handed_off) == 2 * len(emails)
    ran = {e["task_id"] for e in named(stack, "task.succeeded") if e["backend"] == "sqs"}
    assert handed_off <= ran, "the worker drained the queue before it was stopped"
    # (The functions' cut tasks write theirs too, once the FIFO is read: their threads could not be stopped.)
    written = [line for line in reader.text.splitlines() if line.startswith("Email sent to")]
    assert sorted(written) == sorted(f"Email sent to {email}" for email in emails)
    assert named(stack, "task.lost") == []
    assert undrained(output) == []
    assert "local_stack: stopped (exit 0)" in output
    assert "Traceback" not in output


@pytest.mark.not_per_function
def test_ctrl_c_reports_each_task_still_in_the_queue_as_lost(start_stack: StackFactory, tmp_path: Path) -> None:
    """The worker cannot finish them (the FIFO stays unread): each message moto holds is one task.lost line."""
    log = fifo(tmp_path)
    stack = start_stack(
        NOTIFICATION_LOG_PATH=str(log),
        SHUTDOWN_GRACE_SECONDS="1",
        LOCAL_STACK_DRAIN_SECONDS="1",
        TASK_RUNNING_NOTICE_SECONDS="0.2",
    )
    http = httpx.Client(base_url=stack.url, timeout=30)
    emails = [f"user{index}@example.com" for index in range(2)]
    for email in emails:
        assert http.post(f"/notifications/send-welcome/{email}").status_code == 200
    eventually(lambda: len(named(stack, "task.running")) == 2)

    stack.ctrl_c()

    handed_off = {e["task_id"]: e for e in named(stack, "task.handed_off")}
    assert len(handed_off) == 2 * len(emails), "each request's two registered tasks: the running one too"
    lost = {e["task_id"]: e for e in named(stack, "task.lost")}
    assert set(lost) == set(handed_off), "every message left in the queue, in flight or not, is reported"
    for task_id, line in lost.items():
        assert (line["task"], line["request_id"]) == (handed_off[task_id]["task"], handed_off[task_id]["request_id"])
        assert "still in the local queue" in line["reason"]
    assert undrained(stack.output()) == []
    assert "local_stack: stopped (exit 0)" in stack.output()


@pytest.mark.not_per_function
@pytest.mark.timeout(240)
def test_a_worker_exiting_3_is_restarted_and_the_stack_keeps_serving(start_stack: StackFactory, tmp_path: Path) -> None:
    """A sync durable task outlives its message's visibility: the worker exits 3, as documented, and comes back."""
    log = fifo(tmp_path)
    stack = start_stack(
        NOTIFICATION_LOG_PATH=str(log),
        DURABLE_TASKS="notifications.write_notification",
        TASK_TIMEOUT_SECONDS="1",
        LOCAL_STACK_VISIBILITY_SECONDS="3",
    )
    http = httpx.Client(base_url=stack.url, timeout=30)
    assert http.post("/notifications/send-notification/stuck@example.com").status_code == 200
    # The worker's task blocks on the unread FIFO past its message's visibility timeout: exit 3.
    # (Without LOCAL_STACK_VISIBILITY_SECONDS it would take the local default, 60 s.)
    eventually(lambda: "local_stack: worker exited with 3" in stack.output(), timeout=90, what="the worker's exit 3")
    [exiting] = named(stack, "worker.exiting")
    assert exiting["exit_code"] == 3

    reader = FifoReader(log).start()
    try:
        response = http.post("/notifications/send-notification/after@example.com")
        assert response.status_code == 200
        eventually(lambda: "notification for after@example.com" in reader.text, timeout=60)
    finally:
        reader.stop()
    assert stack.process.poll() is None, "the stack kept running"
    assert [name for name in re.findall(r"local_stack: started (\w+)", stack.output())][:3] == [
        "functions",
        "worker",
        "worker",
    ]
    [request] = [e for e in named(stack, "task.enqueued") if e.get("request_id") == response.headers["x-request-id"]]
    # Its end line follows the notification it wrote: wait for the line, not only for the effect.
    ran = eventually(
        lambda: [e for e in named(stack, "task.succeeded") if e["task_id"] == request["task_id"]],
        timeout=30,
        what="the end line of the task after the restart",
    )
    assert len(ran) == 1, "the request after the restart got its durable task run, once"

    os.killpg(stack.process.pid, signal.SIGTERM)  # as `kill`, or a process manager, would stop it
    stack.process.wait(90)
    assert "local_stack: stopped (exit 0)" in stack.output()
    assert "Traceback" not in stack.output()
    assert orphans([stack.output().splitlines()]) == []


@pytest.mark.not_per_function
def test_ctrl_c_in_a_terminal_ends_make_run_itself_with_exit_0(start_stack: StackFactory) -> None:
    """Typed ^C reaches the stack alone (it holds the terminal's foreground): make exits with its status.

    Were make in the foreground, GNU make would re-raise the SIGINT it got itself: exit -2, "Interrupt".
    """
    stack = start_stack(terminal=True)
    stack.ctrl_c()
    output = stack.output()
    assert stack.process.returncode == 0, output
    assert "local_stack: stopped (exit 0)" in output
    assert "Interrupt" not in output and "Traceback" not in output


@pytest.mark.not_per_function
def test_a_stop_signal_ends_the_stacks_wait_and_a_second_one_hurries_it() -> None:
    """The handler only sets a flag the main thread polls: no lock it could be holding (a
    ``threading.Event`` here left ``make run`` deaf to SIGTERM, one run in three under load)."""
    from infra.local_stack import LocalStack

    stack = LocalStack("127.0.0.1", free_port(), free_port())
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        stack.handle_signals()
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGHUP)).start()  # as a closed terminal would
        assert stack.stopping.wait(60), "the wait ended on the signal"
        assert not stack.hurry.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stack.hurry.wait(60), "a second signal: stop waiting for the queue to drain"
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert not {"_cond", "_lock"} & set(vars(stack.stopping)), "a signal handler must not need a lock"
