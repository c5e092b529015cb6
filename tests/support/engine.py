"""The Docker engine for the container tests: the ``docker`` CLI, and containers that clean up after themselves.

Tests that need the engine go through ``require_engine()`` (the ``image`` and ``docker_engine``
fixtures do): when no engine answers (``DOCKER_HOST``, else the default socket) they are
skipped with the reason, unless ``REQUIRE_CONTAINER_ENGINE=1`` (CI sets it): then they fail.
Every name a test gives an image, container, network or compose project starts with
``fbt-test-`` and this run's id, so parallel runs never collide.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest

from infra.servers import parse_json_lines
from tests.support.sam import ROOT

REQUIRE_ENGINE = "REQUIRE_CONTAINER_ENGINE"
RUN_ID = secrets.token_hex(3)
T = TypeVar("T")


def unique_name(purpose: str) -> str:
    return f"fbt-test-{RUN_ID}-{purpose}"


@functools.cache
def engine_problem() -> str | None:
    """Why no container can run here, or None when the engine answers."""
    if shutil.which("docker") is None:
        return "no `docker` CLI on the PATH"
    where = os.environ.get("DOCKER_HOST") or "the default socket (DOCKER_HOST unset)"
    try:
        result = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        return f"the Docker engine at {where} did not answer within 30 s"
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no answer"])[-1]
        return f"no Docker engine answers at {where}: {reason}"
    return None


def require_engine() -> None:
    problem = engine_problem()
    if problem is None:
        return
    if os.environ.get(REQUIRE_ENGINE) == "1":
        pytest.fail(f"{REQUIRE_ENGINE}=1 but {problem}", pytrace=False)
    pytest.skip(f"container tests skipped: {problem} (start Docker or set DOCKER_HOST; {REQUIRE_ENGINE}=1 fails)")


def docker(*args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-4000:]
        raise AssertionError(f"`docker {' '.join(args)}` exited with {result.returncode}:\n{output}")
    return result


@dataclass
class Container:
    name: str

    def inspect(self, template: str) -> str:
        return docker("inspect", "--format", template, self.name).stdout.strip()

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.inspect("{{json .State}}"))
        return state

    def host_port(self, port: int = 8000) -> int:
        """The 127.0.0.1 port Docker published ``port`` on."""
        return int(docker("port", self.name, f"{port}/tcp").stdout.split()[0].rpartition(":")[2])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.host_port()}"

    def logs(self) -> str:
        result = subprocess.run(["docker", "logs", self.name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return result.stdout.decode(errors="replace")

    def events(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """The container's JSON log lines, optionally only ``event`` with the given keys."""
        lines = parse_json_lines(self.logs())
        if event is None:
            return lines
        return [e for e in lines if e.get("event") == event and all(e.get(k) == v for k, v in match.items())]

    def exec(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return docker("exec", self.name, *command, check=check)

    def wait_healthy(self, url: str | None = None, timeout: float = 60.0) -> None:
        """Until GET ``url`` (default: the published port's /health) answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.state()["Running"]:
                raise AssertionError(f"{self.name} exited with {self.state()['ExitCode']}:\n{self.logs()[-4000:]}")
            try:
                if httpx.get(url or f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            except (httpx.TransportError, AssertionError, IndexError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not healthy within {timeout:.0f}s:\n{self.logs()[-4000:]}")

    def stop(self, grace_s: int) -> int:
        """``docker stop`` (SIGTERM, SIGKILL after ``grace_s``); returns the exit code."""
        docker("stop", "--time", str(grace_s), self.name, timeout=grace_s + 60)
        return int(self.state()["ExitCode"])

    def remove(self) -> None:
        docker("rm", "--force", "--volumes", self.name, check=False)


def start(image: str, *command: str, purpose: str, options: Sequence[str] = ()) -> Container:
    """``docker run -d``: returns at once; ``Container.wait_healthy`` waits (start several, then wait)."""
    container = Container(unique_name(purpose))
    docker("run", "--detach", "--name", container.name, *options, image, *command)
    return container


@contextmanager
def running(image: str, *command: str, purpose: str, options: Sequence[str] = ()) -> Iterator[Container]:
    container = start(image, *command, purpose=purpose, options=options)
    try:
        yield container
    finally:
        container.remove()
