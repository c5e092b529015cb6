"""``make run``: the whole stack on this machine, no AWS account needed.

1. moto's server (``ThreadedMotoServer``) on 127.0.0.1:AWS_PORT (4566) is the local AWS;
2. template.yaml's tables, bucket, queues and SES sender are created in it
   (``infra.local_resources``), and the functions get the environment the template gives them;
3. every function is served on 127.0.0.1:PORT (8000), each under ``/<name>`` as the HTTP
   API routes them, by the Docker image's own entry command (``python -m shared.entrypoint``);
4. the durable worker long-polls the local queue (``python -m shared.entrypoint worker``),
   its Prometheus metrics on METRICS_PORT (9102); the functions' are on PORT's ``/metrics``.

It prints every URL; Ctrl-C (or SIGTERM, or closing the terminal) stops the worker and
the server, letting in-flight tasks finish, then moto. ``python -m infra.local_stack provision`` only creates
the resources in whatever ``AWS_ENDPOINT_URL`` points at (docker-compose uses it, with the image's
runtime dependencies only: moto and httpx are imported by ``run`` alone).
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
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
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
    process: subprocess.Popen[bytes]

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


@dataclass
class LocalStack:
    host: str
    port: int
    aws_port: int
    metrics_port: int = 9102
    children: list[Child] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

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
        process = subprocess.Popen(command, cwd=ROOT, env=dict(env), start_new_session=True)  # noqa: S603
        print(f"local_stack: started {name} (pid {process.pid})", flush=True)
        child = Child(name, process)
        self.children.append(child)
        return child

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
            f"  {'notification log':<{width}}{log_path if log_path.is_absolute() else ROOT / log_path}",
            f"  {'metrics':<{width}}{self.url}/metrics   (functions; Prometheus text format)",
            f"  {'':<{width}}http://{self.host}:{self.metrics_port}/metrics   (worker)",
            "",
            f"  try: curl -X POST {self.url}/notifications/send-notification/foo@example.com",
            "",
        ]
        return "\n".join(lines)

    def supervise(self) -> int:
        """Until a signal or a child's death; returns the exit status."""
        while not self.stopping.wait(0.5):
            for child in self.children:
                if child.process.poll() is not None:
                    print(f"local_stack: {child.name} exited with {child.process.returncode}", flush=True)
                    return 1
        return 0

    def stop_children(self) -> None:
        for child in reversed(self.children):
            child.stop(grace_s=35.0)

    def run(self) -> int:
        for port in (self.port, self.aws_port, self.metrics_port):
            if not port_is_free(self.host if port != self.aws_port else "127.0.0.1", port):
                raise SystemExit(
                    f"port {port} is in use: choose another with PORT=..., AWS_PORT=... or METRICS_PORT=..."
                )

        def request_stop(signum: int, frame: FrameType | None) -> None:
            self.stopping.set()

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed
            signal.signal(signum, request_stop)
        with self.local_aws():
            os.environ.update(FAKE_CREDENTIALS, AWS_ENDPOINT_URL=self.aws_url)
            os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
            resources = provision()
            env = self.environment(resources)
            entry = [sys.executable, "-m", "shared.entrypoint"]
            status = 1
            try:
                api = self.start("functions", entry, env)
                self.start("worker", [*entry, "worker"], env)
                self.wait_healthy(api)
                if not self.stopping.is_set():
                    print(self.banner(resources, env), flush=True)
                status = self.supervise()
            except (RuntimeError, TimeoutError) as exc:
                print(f"local_stack: {exc}", flush=True)
            finally:
                self.stop_children()
        print("local_stack: stopped", flush=True)
        return status


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=["run", "provision"], default="run")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"), help="where the functions listen")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--aws-port", type=int, default=int(os.environ.get("AWS_PORT", "4566")))
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("METRICS_PORT", "9102")))
    args = parser.parse_args(argv)
    if args.command == "provision":
        print(json.dumps(provision(), indent=2, default=str))
        return
    raise SystemExit(LocalStack(args.host, args.port, args.aws_port, args.metrics_port).run())


if __name__ == "__main__":
    main()
