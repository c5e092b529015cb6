"""infra/docker-compose.yml, for real: up --build, the tutorial and a durable task, stop, down -v.

The project's own file, run as a user runs it, with one override file (compose's own
merge: ``!override``) that publishes the ports on free ones and tags the image with this
run's name, so that parallel runs and a stack already on 8000/4566 never collide. The
tests run in order: they share one stack, which the last one takes down.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.servers import eventually, parse_json_lines
from tests.support.engine import docker, unique_name
from tests.support.moto_server import LocalAws
from tests.support.sam import ROOT

pytestmark = pytest.mark.slow  # `make test-fast` leaves it out

COMPOSE_FILE = ROOT / "infra" / "docker-compose.yml"
# docker compose stop's default: SIGTERM, then SIGKILL after 10 s.
GRACE_S = 10


@dataclass
class Stack:
    project: str
    override: Path

    def compose(self, *args: str, timeout: float = 180, check: bool = True) -> Any:
        files = ["--file", str(COMPOSE_FILE), "--file", str(self.override)]
        return docker("compose", "--project-name", self.project, *files, *args, timeout=timeout, check=check)

    def url(self, service: str, port: int) -> str:
        return f"http://{self.compose('port', service, str(port)).stdout.strip()}"

    def events(self, service: str) -> list[dict[str, Any]]:
        return parse_json_lines(self.compose("logs", "--no-log-prefix", "--no-color", service).stdout)

    def containers(self) -> list[dict[str, Any]]:
        lines = self.compose("ps", "--all", "--format", "json").stdout.splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def leftovers(self) -> dict[str, str]:
        label = f"label=com.docker.compose.project={self.project}"
        return {
            kind: docker(*command, "--quiet", "--filter", label).stdout.strip()
            for kind, command in {
                "containers": ("ps", "--all"),
                "volumes": ("volume", "ls"),
                "networks": ("network", "ls"),
            }.items()
        }


@pytest.fixture(scope="module")
def stack(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    project = unique_name("compose")
    image = f"{project}:image"
    override = tmp_path_factory.mktemp("compose") / "override.yml"
    override.write_text(
        "services:\n"
        '  aws:\n    ports: !override ["127.0.0.1::5000"]\n'
        f'  functions:\n    image: {image}\n    ports: !override ["127.0.0.1::8000"]\n'
        f"  setup:\n    image: {image}\n"
        f"  worker:\n    image: {image}\n"
    )
    stack = Stack(project, override)
    try:
        stack.compose("up", "--detach", "--build", timeout=900)
        eventually(lambda: healthy(stack), timeout=120, what="the functions service")
        yield stack
    finally:
        stack.compose("down", "--volumes", "--timeout", "1", check=False)
        docker("image", "rm", "--force", image, check=False)


def healthy(stack: Stack) -> bool:
    try:
        return httpx.get(f"{stack.url('functions', 8000)}/health", timeout=2).status_code == 200
    except (httpx.TransportError, AssertionError):
        return False


def test_compose_serves_the_tutorial_with_its_log_on_the_shared_volume(stack: Stack) -> None:
    base = stack.url("functions", 8000)
    response = httpx.post(f"{base}/notifications/send-notification/foo@example.com")
    assert response.json() == {"message": "Notification sent in the background"}
    logged = eventually(
        lambda: stack.compose("exec", "-T", "worker", "cat", "/var/lib/app/notifications.log", check=False).stdout
    )
    assert logged == "notification for foo@example.com: some notification\n"


def test_compose_runs_a_durable_task_through_its_network(stack: Stack) -> None:
    """users registration -> moto's SQS -> the worker service -> the welcome e-mail in moto's SES."""
    aws = LocalAws(stack.url("aws", 5000), {})
    sent_before = aws.emails_sent()
    response = httpx.post(
        f"{stack.url('functions', 8000)}/users/users", json={"name": "Ada Lovelace", "email": "ada@example.com"}
    )
    assert response.status_code == 201, response.text
    succeeded = eventually(
        lambda: [e for e in stack.events("worker") if e.get("event") == "task.succeeded"], timeout=60
    )
    assert [(e["task"], e["backend"]) for e in succeeded] == [("email.send_welcome", "sqs")]
    assert aws.emails_sent() == sent_before + 1


def test_compose_stop_ends_every_service_within_its_grace_period(stack: Stack) -> None:
    """0, or 143 (the SIGTERM it was asked to stop with, through init, after a clean shutdown); 137 is SIGKILL."""
    stack.compose("stop", timeout=GRACE_S + 120)
    exits = {container["Service"]: (container["State"], container["ExitCode"]) for container in stack.containers()}
    assert exits.keys() == {"aws", "setup", "functions", "worker"}
    assert exits["setup"] == ("exited", 0)
    for service in ("aws", "functions", "worker"):
        assert exits[service][0] == "exited"
        assert exits[service][1] in (0, 143), f"{service} was killed after the {GRACE_S}s grace period: {exits}"
    assert [e for e in stack.events("functions") if e.get("event") == "Application shutdown complete."]


def test_compose_down_leaves_nothing_behind(stack: Stack) -> None:
    stack.compose("down", "--volumes")
    assert stack.leftovers() == {"containers": "", "volumes": "", "networks": ""}
