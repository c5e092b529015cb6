"""``make run``: the whole stack on this machine, no AWS account needed.

1. moto's server (``ThreadedMotoServer``) on 127.0.0.1:AWS_PORT (4566) is the local AWS;
2. template.yaml's tables, bucket, queues and SES sender are created in it
   (``infra.local_resources``), and the functions get the environment the template gives them;
3. every function is served on 127.0.0.1:PORT (8000), each under ``/<name>`` as the HTTP
   API routes them, by the Docker image's own entry command (``python -m shared.entrypoint``);
4. the durable worker long-polls the local queue (``python -m shared.entrypoint worker``),
   its Prometheus metrics on METRICS_PORT (9102); the functions' are on PORT's ``/metrics``.

It prints every URL. Ctrl-C (or SIGTERM, or closing the terminal) stops it in the order that
loses nothing silently, and exits 0 (so does ``make run``: in a terminal the stack takes the
foreground, so make never sees the Ctrl-C and re-raises it):

1. the functions' server first, with its grace (``SHUTDOWN_GRACE_SECONDS``): the tasks it hands
   off to the queue during that grace reach the queue while the worker still runs;
2. the worker drains the queue, for at most ``LOCAL_STACK_DRAIN_SECONDS`` (default 30; a second
   Ctrl-C stops waiting), then it is stopped (with its own grace);
3. every message still in the queue (visible or in flight) is reported, one ``task.lost`` JSON
   line per task (``task_id``, ``request_id``, ``task``, ``reason``, read from its body), because
   moto keeps its queues in memory only; then moto stops.

A worker that exits 3 (a sync task outlived its message's deadline: "let the orchestrator restart
it") is restarted, as an orchestrator would, after a short backoff (1 s, doubling up to 30 s, back
to 1 s once a worker ran for a minute); the stack keeps serving. Any other exit of a child stops
the stack (exit 1). ``LOCAL_STACK_VISIBILITY_SECONDS`` sets the local queue's visibility timeout
(default: the template's, at most 60 s): how soon a failed task comes back, and how long a sync
task may run on the worker before it exits 3.

``python -m infra.local_stack provision`` only creates the resources in whatever ``AWS_ENDPOINT_URL``
points at (docker-compose uses it, with the image's runtime dependencies only: moto and httpx are
imported by ``run`` alone).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from infra.paths import shown

ROOT = Path(__file__).resolve().parents[1]
DRAIN_SECONDS = 30.0
"""On Ctrl-C: how long the worker may take to empty the queue once the functions stopped
(``LOCAL_STACK_DRAIN_SECONDS``)."""
STOP_MARGIN_S = 5.0
"""A child gets its own ``SHUTDOWN_GRACE_SECONDS`` (default 30) plus this after SIGTERM; then SIGKILL."""
RESTART_BACKOFF_S, RESTART_BACKOFF_MAX_S, RESTART_RESET_S = 1.0, 30.0, 60.0
DEPTH = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "ApproximateNumberOfMessagesDelayed")
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_SESSION_TOKEN": "local",
}


def provision() -> dict[str, Any]:
    """Create template.yaml's resources in ``AWS_ENDPOINT_URL``; safe to repeat.

    Returns what was created and ``environment``: the variables the template gives the
    functions, resolved to the local resources and the parameters' defaults.
    """
    from infra.local_resources import create_resources
    from shared import aws
    from shared.settings import get_settings

    get_settings.cache_clear()
    aws.reset_clients()
    return create_resources()


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class Child:
    name: str
    command: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0
    streak: int = 0
    """Restarts in a row, each after less than RESTART_RESET_S of running: the backoff's exponent."""

    @property
    def grace_s(self) -> float:
        """How long it may take to stop: its own grace period, plus a margin."""
        try:
            return float(self.env.get("SHUTDOWN_GRACE_SECONDS", "30")) + STOP_MARGIN_S
        except ValueError:
            return 30.0 + STOP_MARGIN_S

    def stop(self, grace_s: float) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                print(f"local_stack: {self.name} still running after {grace_s:.0f}s; killing it", flush=True)
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class StopRequest:
    """A request to stop, set by a signal handler and waited for by the main thread: a polled attribute.

    Not a ``threading.Event``: a handler runs on the main thread between two bytecodes, maybe while
    that thread holds the Event's own lock inside ``wait()``, and ``set()`` would then wait for that
    lock forever (``make run`` ignored SIGTERM so, about one run in three on a loaded machine).
    """

    POLL_S = 0.05

    def __init__(self) -> None:
        self._requested = False

    def set(self) -> None:
        self._requested = True

    def is_set(self) -> bool:
        return self._requested

    def wait(self, timeout: float) -> bool:
        """True as soon as it is set, False after ``timeout`` seconds without."""
        deadline = time.monotonic() + timeout
        while not self._requested and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, self.POLL_S))
        return self._requested


@dataclass
class LocalStack:
    host: str
    port: int
    aws_port: int
    metrics_port: int = 9102
    drain_s: float = DRAIN_SECONDS
    """How long the worker may take to empty the queue once the functions stopped."""
    visibility_s: float | None = None
    """The local task queue's visibility timeout, when not the template's (capped at 60 s)."""
    children: list[Child] = field(default_factory=list)
    stopping: StopRequest = field(default_factory=StopRequest)
    hurry: StopRequest = field(default_factory=StopRequest)
    """A second signal while stopping: stop waiting for the queue to drain."""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def aws_url(self) -> str:
        return f"http://127.0.0.1:{self.aws_port}"

    @contextmanager
    def local_aws(self) -> Iterator[None]:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per AWS call otherwise
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.aws_port, verbose=False)
        server.start()
        try:
            yield
        finally:
            server.stop()

    def environment(self, resources: Mapping[str, Any]) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key != "AWS_PROFILE"}
        env.update(FAKE_CREDENTIALS)
        env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        env.update(resources["environment"])  # DURABLE_TASKS: the template's default, or the shell's
        # A short long-poll, so that Ctrl-C stops the worker within a couple of seconds.
        env.setdefault("WORKER_WAIT_SECONDS", "2")
        env.update(
            AWS_ENDPOINT_URL=self.aws_url,
            TASK_QUEUE_URL=str(resources["task_queue_url"]),
            HOST=self.host,
            PORT=str(self.port),
            WORKER_METRICS_PORT=str(self.metrics_port),
        )
        env.pop("FUNCTION", None)
        return env

    def start(self, name: str, command: list[str], env: Mapping[str, str]) -> Child:
        # Own session: the terminal's Ctrl-C reaches only this process, which then stops the
        # children with one SIGTERM each (a second signal would make uvicorn cut in-flight
        # tasks), and moto only after them, so that those tasks finish their AWS calls.
        child = Child(name, command, dict(env), self._spawn(name, command, env))
        self.children.append(child)
        return child

    def _spawn(self, name: str, command: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command, cwd=ROOT, env=dict(env), start_new_session=True)  # noqa: S603
        print(f"local_stack: started {name} (pid {process.pid})", flush=True)
        return process

    def restart(self, child: Child) -> bool:
        """Start ``child`` again after a backoff; False when a stop was asked for meanwhile."""
        if time.monotonic() - child.started_at >= RESTART_RESET_S:
            child.streak = 0
        child.restarts += 1
        child.streak += 1
        delay = min(RESTART_BACKOFF_S * 2 ** (child.streak - 1), RESTART_BACKOFF_MAX_S)
        print(
            f"local_stack: {child.name} exited with {child.process.returncode} (a task outlived its deadline): "
            f"restarting it in {delay:.0f}s (restart {child.restarts}), as an orchestrator would",
            flush=True,
        )
        if self.stopping.wait(delay):
            return False
        child.process = self._spawn(child.name, child.command, child.env)
        child.started_at = time.monotonic()
        return True

    def wait_healthy(self, child: Child, timeout_s: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.stopping.is_set():
            if child.process.poll() is not None:
                raise RuntimeError(f"{child.name} exited with {child.process.returncode} while starting")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        if not self.stopping.is_set():
            raise TimeoutError(f"{self.url}/health did not answer within {timeout_s:.0f}s")

    def banner(self, resources: Mapping[str, Any], env: Mapping[str, str]) -> str:
        import httpx

        functions = httpx.get(f"{self.url}/", timeout=5.0).json()
        width = max(len(name) for name in [*functions, "notification log"]) + 2
        lines = ["", "Local stack running; Ctrl-C stops it.", ""]
        for name, links in functions.items():
            lines.append(f"  {name:<{width}}{links['url']}   docs: {links['docs']}")
        log_path = Path(env.get("NOTIFICATION_LOG_PATH", "log.txt"))
        lines += [
            "",
            f"  {'local AWS':<{width}}{self.aws_url}   (moto; dashboard: {self.aws_url}/moto-api/)",
            f"  {'task queue':<{width}}{resources['task_queue_url']}   durable tasks: {env['DURABLE_TASKS'] or '-'}",
            f"  {'notification log':<{width}}{shown(ROOT / log_path)}",
            f"  {'metrics':<{width}}{self.url}/metrics   (functions; Prometheus text format)",
            f"  {'':<{width}}http://{self.host}:{self.metrics_port}/metrics   (worker)",
            "",
            f"  try: curl -X POST {self.url}/notifications/send-notification/foo@example.com",
            "",
        ]
        return "\n".join(lines)

    def supervise(self, restart_exit: int) -> int:
        """Until a signal or a child's death; returns the exit status.

        A worker exiting ``restart_exit`` (a stuck task) is restarted; any other exit ends the stack.
        """
        while not self.stopping.wait(0.5):
            for child in self.children:
                returncode = child.process.poll()
                if returncode is None:
                    continue
                if child.name == "worker" and returncode == restart_exit:
                    if self.restart(child):
                        continue
                    return 0
                print(f"local_stack: {child.name} exited with {returncode}", flush=True)
                return 1
        return 0

    def stop_children(self, queue_url: str | None) -> None:
        """The functions first (their grace hands tasks to the queue), the worker once it drained it."""
        workers = [child for child in self.children if child.name == "worker"]
        for child in self.children:
            if child not in workers:
                child.stop(grace_s=child.grace_s)
        for child in workers:
            if queue_url is not None and child.process.poll() is None:
                self.drain(queue_url, child)
            child.stop(grace_s=child.grace_s)
        if queue_url is not None:
            report_lost(queue_url)

    def drain(self, queue_url: str, worker: Child) -> None:
        """Wait until the queue is empty (nothing visible, in flight or delayed), for ``drain_s`` at most."""
        from shared import aws

        sqs = aws.client("sqs")
        deadline = time.monotonic() + self.drain_s
        announced = False
        while worker.process.poll() is None and not self.hurry.is_set():
            attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=list(DEPTH))["Attributes"]
            left = sum(int(attributes.get(name, 0)) for name in DEPTH)
            if left == 0:
                return
            if time.monotonic() >= deadline:
                print(f"local_stack: {left} message(s) still in the queue after {self.drain_s:.0f}s", flush=True)
                return
            if not announced:
                print(
                    f"local_stack: the worker is draining the queue ({left} message(s); at most "
                    f"{self.drain_s:.0f}s, LOCAL_STACK_DRAIN_SECONDS; Ctrl-C again to stop waiting)",
                    flush=True,
                )
                announced = True
            self.hurry.wait(0.25)

    def run(self) -> int:
        self.handle_signals()  # first: a Ctrl-C while it starts stops it the same way, without a traceback
        from shared.worker.processing import EXIT_TASK_STUCK

        for port in (self.port, self.aws_port, self.metrics_port):
            if not port_is_free(self.host if port != self.aws_port else "127.0.0.1", port):
                raise SystemExit(
                    f"port {port} is in use: choose another with PORT=..., AWS_PORT=... or METRICS_PORT=..."
                )
        with self.local_aws():
            os.environ.update(FAKE_CREDENTIALS, AWS_ENDPOINT_URL=self.aws_url)
            os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
            resources = provision()
            if self.visibility_s is not None:
                set_visibility_timeout(str(resources["task_queue_url"]), self.visibility_s)
            env = self.environment(resources)
            entry = [sys.executable, "-m", "shared.entrypoint"]
            status = 1
            try:
                api = self.start("functions", entry, env)
                self.start("worker", [*entry, "worker"], env)
                self.wait_healthy(api)
                if not self.stopping.is_set():
                    print(self.banner(resources, env), flush=True)
                status = self.supervise(EXIT_TASK_STUCK)
            except (RuntimeError, TimeoutError) as exc:
                print(f"local_stack: {exc}", flush=True)
            finally:
                self.stop_children(str(resources["task_queue_url"]))
        # ``make run`` exits with it too: the stack holds the terminal's foreground (``foreground_of_the_terminal``).
        print(f"local_stack: stopped (exit {status})", flush=True)
        return status

    def handle_signals(self) -> None:
        def request_stop(signum: int, frame: FrameType | None) -> None:
            if self.stopping.is_set():
                self.hurry.set()
            self.stopping.set()

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed
            signal.signal(signum, request_stop)


def set_visibility_timeout(queue_url: str, seconds: float) -> None:
    from shared import aws

    aws.client("sqs").set_queue_attributes(QueueUrl=queue_url, Attributes={"VisibilityTimeout": str(round(seconds))})


def report_lost(queue_url: str) -> int:
    """One ``task.lost`` line per message moto still holds in the queue (visible or in flight).

    Read from moto's in-memory store, in this process: a message in flight cannot be received
    through the API until its visibility timeout ends, and moto is about to stop with it.
    """
    from moto.sqs.models import sqs_backends

    name = queue_url.rstrip("/").rsplit("/", 1)[-1]
    lost = 0
    for regions in list(sqs_backends.values()):
        for backend in list(regions.values()):
            queue = backend.queues.get(name)
            for message in list(queue._messages) if queue is not None else []:
                print(lost_line(message.id, message.body, in_flight=not message.visible), flush=True)
                lost += 1
    return lost


def lost_line(message_id: str, body: str, *, in_flight: bool) -> str:
    try:
        fields = json.loads(body)
    except ValueError:
        fields = {}
    if not isinstance(fields, dict):
        fields = {}
    return json.dumps(
        {
            "event": "task.lost",
            "task_id": fields.get("task_id"),
            "request_id": fields.get("request_id"),
            "task": fields.get("task"),
            "reason": "make run stopped with this message still in the local queue (moto keeps it in memory only)",
            "in_flight": in_flight,
            "message_id": message_id,
            "backend": "sqs",
            "service": "local_stack",
            "level": "error",
            "timestamp": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        }
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=["run", "provision"], default="run")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"), help="where the functions listen")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--aws-port", type=int, default=int(os.environ.get("AWS_PORT", "4566")))
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("METRICS_PORT", "9102")))
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=_seconds("LOCAL_STACK_DRAIN_SECONDS", DRAIN_SECONDS),
        help="on Ctrl-C, how long the worker may take to empty the queue (LOCAL_STACK_DRAIN_SECONDS)",
    )
    parser.add_argument(
        "--visibility-seconds",
        type=float,
        default=_seconds("LOCAL_STACK_VISIBILITY_SECONDS", None),
        help="the task queue's visibility timeout (LOCAL_STACK_VISIBILITY_SECONDS; default: the template's, "
        "at most 60): how soon a failed task comes back, how long a worker's task may run before it exits 3",
    )
    args = parser.parse_args(argv)
    if args.command == "provision":
        print(json.dumps(provision(), indent=2, default=str))
        return
    stack = LocalStack(
        args.host,
        args.port,
        args.aws_port,
        args.metrics_port,
        drain_s=args.drain_seconds,
        visibility_s=args.visibility_seconds,
    )
    with foreground_of_the_terminal():
        status = stack.run()
    raise SystemExit(status)


@contextmanager
def foreground_of_the_terminal() -> Iterator[None]:
    """While the stack runs, Ctrl-C reaches this process alone, not ``make`` above it.

    GNU make re-raises a SIGINT it received itself once its recipe ends, so ``make run`` would
    exit 130 whatever the stack did. As a shell does for a job, the stack takes its own process
    group and the terminal's foreground (``tcsetpgrp``), and gives it back when it is done; make
    then exits with the stack's status. Without a terminal (CI, tests) nothing changes: signals
    come from whoever sends them.
    """
    try:
        tty = os.open("/dev/tty", os.O_RDWR)
    except OSError:
        yield
        return
    try:
        previous = os.tcgetpgrp(tty)
        if previous != os.getpgrp():  # a background job: the terminal is not ours to take
            yield
            return
        if os.getpgrp() != os.getpid():
            os.setpgid(0, 0)
        with _sigttou_ignored():
            os.tcsetpgrp(tty, os.getpgrp())
        try:
            yield
        finally:
            with _sigttou_ignored():
                os.tcsetpgrp(tty, previous)
    finally:
        os.close(tty)


@contextmanager
def _sigttou_ignored() -> Iterator[None]:
    """``tcsetpgrp`` from a process group that may not be in the foreground stops it (SIGTTOU) otherwise."""
    saved = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTTOU, saved)


def _seconds(name: str, default: float | None) -> float | None:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 43200:  # SQS's longest visibility timeout: 12 hours
        print(f"local_stack: {name}={text!r} is not a number of seconds between 0 and 43200", file=sys.stderr)
        raise SystemExit(2)
    return value


if __name__ == "__main__":
    main()
