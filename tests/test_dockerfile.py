"""The Dockerfile: lint-clean, small and safe by construction, and its entry command really serves.

These checks need no Docker engine: the image's exact ENTRYPOINT runs outside Docker, with
the same argv and ENV (its venv /opt/venv standing for the project's .venv, its WORKDIR for
the project root), bound to 127.0.0.1 on a free port. test_container.py builds and runs the
image itself whenever an engine answers.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from infra.durable_resources import DEFAULT_QUEUE_NAME
from infra.runtime_api import lambda_environment, load_event
from infra.servers import ServerProcess, free_port, wait_until_healthy
from tests.support.sam import ROOT, function_folders

DOCKERFILE = ROOT / "Dockerfile"
IMAGE_VENV = "/opt/venv"


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arguments for name, arguments in self.instructions if name == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for arguments in self.all("ENV"):
            for pair in shlex.split(arguments):
                key, _, value = pair.partition("=")
                values[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m[1], os.environ.get(m[1], "")), value)
        return values


def stages() -> list[Stage]:
    """The Dockerfile's stages, each with its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    parsed: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            parsed.append(Stage(arguments.split()[0]))
        else:
            parsed[-1].instructions.append((keyword.upper(), arguments.strip()))
    return parsed


def entry_command() -> list[str]:
    final = stages()[-1]
    (entrypoint,) = final.all("ENTRYPOINT")
    command: list[str] = json.loads(entrypoint) + (json.loads(final.all("CMD")[-1]) if final.all("CMD") else [])
    return command


def image_environment(**overrides: str) -> dict[str, str]:
    """The final stage's ENV on this machine: the image's venv is the project's .venv."""
    env = {**os.environ}
    for key, value in stages()[-1].env().items():
        env[key] = value.replace(IMAGE_VENV, str(ROOT / ".venv"))
    env.update(overrides)
    return env


def test_hadolint_reports_nothing() -> None:
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "hadolint"), str(DOCKERFILE)], capture_output=True, text=True, cwd=ROOT
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_image_is_multi_stage_slim_non_root_and_healthchecked() -> None:
    build, final = stages()
    assert final.base.startswith("python:3.12-slim")
    assert build.base == final.base
    # Dependencies from the lock, wheels only: no compiler anywhere, none in the final stage.
    (install,) = [run for run in build.all("RUN") if "pip install" in run]
    assert "-r requirements.txt" in install
    assert "--only-binary=:all:" in install
    for stage in (build, final):
        assert not any(re.search(r"apt-get|apk |gcc|build-essential", run) for run in stage.all("RUN"))
    assert {copy.split()[0] for copy in final.all("COPY")} == {"--from=build"}
    (user,) = final.all("USER")
    assert user not in ("root", "0")
    assert final.all("HEALTHCHECK")
    assert entry_command() == ["python", "-m", "shared.entrypoint"]


def test_dockerignore_lets_in_only_the_lock_and_the_code() -> None:
    rules = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*"
    assert {rule for rule in rules if rule.startswith("!")} == {"!requirements.txt", "!shared/", "!functions/"}
    copied = {instruction.split()[0] for stage in stages() for instruction in stage.all("COPY")}
    assert copied - {"--from=build"} == {"requirements.txt", "shared/", "functions/"}


@pytest.fixture
def image_server(isolated_settings: Path) -> Iterator[ServerProcess]:
    """The image's entry command, every function on one port (the image's default)."""
    port = free_port()
    env = image_environment(HOST="127.0.0.1", PORT=str(port), NOTIFICATION_LOG_PATH=str(isolated_settings))
    env.pop("FUNCTION", None)
    server = ServerProcess(entry_command(), env, port)
    try:
        wait_until_healthy(f"{server.base_url}/health", server.process)
        yield server
    finally:
        server.close()


def test_the_entry_command_serves_every_function_under_its_prefix(
    image_server: ServerProcess, isolated_settings: Path
) -> None:
    base = image_server.base_url
    assert httpx.get(f"{base}/health").json() == {"status": "ok", "functions": function_folders()}
    for name in function_folders():
        assert httpx.get(f"{base}/{name}/health").json() == {"status": "ok", "service": name}
        docs = httpx.get(f"{base}/{name}/docs")
        assert docs.status_code == 200
        assert f"/{name}/openapi.json" in docs.text
    response = httpx.post(f"{base}/notifications/send-notification/foo@example.com")
    assert response.json() == {"message": "Notification sent in the background"}
    wait_for_text(isolated_settings, "notification for foo@example.com: some notification\n")
    unknown = httpx.get(f"{base}/nope/health")
    assert unknown.status_code == 404
    assert "/notifications" in unknown.json()["detail"]


def test_the_healthcheck_command_follows_the_server(image_server: ServerProcess) -> None:
    (healthcheck,) = stages()[-1].all("HEALTHCHECK")
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    env = image_environment(PORT=str(image_server.port))
    assert subprocess.run(command, cwd=ROOT, env=env, timeout=30).returncode == 0
    image_server.stop()
    assert subprocess.run(command, cwd=ROOT, env=env, timeout=30).returncode == 1


def test_function_env_serves_one_function_at_the_root(isolated_settings: Path) -> None:
    port = free_port()
    env = image_environment(HOST="127.0.0.1", PORT=str(port), FUNCTION="users")
    server = ServerProcess(entry_command(), env, port)
    try:
        wait_until_healthy(f"{server.base_url}/health", server.process)
        assert httpx.get(f"{server.base_url}/health").json() == {"status": "ok", "service": "users"}
        assert httpx.get(f"{server.base_url}/openapi.json").json()["info"]["title"] == "users"
    finally:
        server.close()


def test_the_entry_command_is_a_lambda_runtime_when_lambda_starts_it(isolated_settings: Path) -> None:
    """AWS_LAMBDA_RUNTIME_API set: the runtime client serves functions.$FUNCTION.app.handler."""
    env = {**image_environment(NOTIFICATION_LOG_PATH=str(isolated_settings)), "FUNCTION": "notifications"}
    handler = "functions.notifications.app.handler"  # _HANDLER; the entry command finds it from FUNCTION
    with lambda_environment(handler, env=env, command=entry_command(), cwd=ROOT) as lam:
        invocation = lam.invoke(load_event("notifications-send-notification-http-api.json")).wait_free()
        assert invocation.result["statusCode"] == 200
        assert json.loads(invocation.result["body"]) == {"message": "Notification sent in the background"}
        assert lam.logs("task.succeeded", backend="lambda-extension")
    assert isolated_settings.read_text() == "notification for foo@example.com: some notification\n"


def wait_for_text(path: Path, expected: str, timeout: float = 10.0) -> None:
    """Background tasks finish after the response: wait for their effect, then compare."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (path.exists() and path.read_text() == expected):
        time.sleep(0.05)
    assert path.read_text() == expected


def test_docker_compose_runs_the_image_against_moto_server_image() -> None:
    compose = yaml.safe_load((ROOT / "infra" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["aws"]["image"].startswith("motoserver/moto:")
    for name in ("setup", "functions", "worker"):
        service = services[name]
        assert service["build"] == {"context": "..", "dockerfile": "Dockerfile"}
        assert service["environment"]["AWS_ENDPOINT_URL"] == "http://aws:5000"
        queue = service["environment"]["TASK_QUEUE_URL"]
        assert queue.rsplit("/", 1)[-1] == DEFAULT_QUEUE_NAME
    assert services["functions"]["ports"] == ["127.0.0.1:8000:8000"]
    assert "command" not in services["functions"]  # the image's default: every function on one port
    assert services["worker"]["command"] == ["worker"]
    assert services["setup"]["entrypoint"] == ["python", "-m", "infra.local_stack", "provision"]
    # The setup container has the image's runtime dependencies only: no moto, no httpx.
    blocked = "import sys; sys.modules['moto'] = sys.modules['httpx'] = None; import infra.local_stack"
    assert subprocess.run([sys.executable, "-c", blocked], cwd=ROOT).returncode == 0
