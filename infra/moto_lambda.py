"""moto's Lambda in Docker, for the deploy rehearsal: the images it needs, from the project's own.

moto runs an invoked function in a container of ``MOTO_DOCKER_LAMBDA_IMAGE`` with the command
``HANDLER EVENT_JSON`` (the docker-lambda protocol), after copying the function's code into a
volume through a container of ``busybox``. No image registry is reachable here, so both are built
from the image the project's Dockerfile builds:

- the Lambda image: the project's image, its packages moved from ``/opt/venv`` to ``/venv``
  (moto mounts the function's layers over ``/opt``, and gives a function CloudFormation created no
  layers: the packages the layers would hold come from the image instead), with
  infra/lambda_once.py as its entry point: Lambda's own runtime client runs the handler against
  the Runtime API emulator;
- ``busybox:latest``, only when the engine has none: the project's image without its entry
  point (moto runs ``sleep 100`` in it and copies the code in).

The containers share the host's network (``MOTO_DOCKER_NETWORK_MODE=host``) to reach moto's
server on 127.0.0.1, the only address they are given.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from infra.runtime_api import load_event

ROOT = Path(__file__).resolve().parents[1]
HELPER_FILES = ("__init__.py", "json_lines.py", "runtime_api.py", "lambda_once.py")
BUSYBOX = "busybox:latest"
STAND_IN_LABEL = "fastapi-background-tasks.stand-in"

LAMBDA_DOCKERFILE = """\
FROM {base}
USER root
RUN mv /opt/venv /venv
ENV PATH=/venv/bin:/usr/local/bin:/usr/bin:/bin PYTHONPATH=/helper
COPY infra/ /helper/infra/
USER 10001
ENTRYPOINT ["python", "-m", "infra.lambda_once"]
"""

BUSYBOX_DOCKERFILE = """\
FROM {base}
LABEL {label}=busybox
ENTRYPOINT []
"""


def run_docker(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    cli = shutil.which("docker") or "docker"
    return subprocess.run([cli, *args], capture_output=True, text=True, timeout=timeout)  # noqa: S603 (the engine's CLI)


def engine_problem() -> str | None:
    """Why no container can run here (no ``docker`` CLI, no engine answering), or None."""
    if shutil.which("docker") is None:
        return "no `docker` CLI on the PATH"
    where = os.environ.get("DOCKER_HOST") or "the default socket"
    try:
        result = run_docker("version", "--format", "{{.Server.Version}}", timeout=30)
    except subprocess.TimeoutExpired:
        return f"the Docker engine at {where} did not answer within 30 s"
    if result.returncode != 0:
        return f"no Docker engine answers at {where}"
    return None


def docker(*args: str) -> str:
    result = run_docker(*args)
    if result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:2])} failed: {(result.stderr or result.stdout)[-2000:]}")
    return result.stdout


def build(tag: str, dockerfile: str, context: Path) -> None:
    (context / "Dockerfile").write_text(dockerfile)
    docker("build", "--quiet", "--tag", tag, str(context))


def build_images(prefix: str) -> str:
    """The project's image, then the Lambda image from it (and ``busybox`` if missing); the Lambda image's tag."""
    project, lambda_image = f"{prefix}:image", f"{prefix}:lambda"
    docker("build", "--quiet", "--tag", project, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="moto-lambda-image-") as directory:
        context = Path(directory)
        (context / "infra").mkdir()
        for name in HELPER_FILES:
            shutil.copy2(ROOT / "infra" / name, context / "infra" / name)
        build(lambda_image, LAMBDA_DOCKERFILE.format(base=project), context)
    if run_docker("image", "inspect", BUSYBOX).returncode != 0:
        with tempfile.TemporaryDirectory(prefix="moto-busybox-") as directory:
            build(BUSYBOX, BUSYBOX_DOCKERFILE.format(base=project, label=STAND_IN_LABEL), Path(directory))
    return lambda_image


def remove_images(prefix: str) -> None:
    run_docker("image", "rm", "--force", f"{prefix}:lambda", f"{prefix}:image")


def server_environment(lambda_image: str) -> dict[str, str]:
    """What moto's server needs to run functions in that image, on the host's network (moto
    listens on 127.0.0.1 only; infra/lambda_once.py points the function there)."""
    return {"MOTO_DOCKER_LAMBDA_IMAGE": lambda_image, "MOTO_DOCKER_NETWORK_MODE": "host"}


def health_event(root_path: str) -> dict[str, Any]:
    """The HTTP API's event for ``GET {root_path}/health`` through the template's route
    ``ANY {root_path}/{proxy+}`` (its ``$default`` stage), as API Gateway sends it."""
    event: dict[str, Any] = copy.deepcopy(load_event("notifications-send-notification-http-api.json"))
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"{root_path}/health"
    event["requestContext"]["http"]["method"] = "GET"
    event["routeKey"] = event["requestContext"]["routeKey"] = f"ANY {root_path}/{{proxy+}}"
    event["pathParameters"] = {"proxy": "health"}
    return event


def registration_event(email: str) -> dict[str, Any]:
    """``POST /users/users`` through the users function's route, registering ``email``."""
    event: dict[str, Any] = copy.deepcopy(load_event("users-register-http-api.json"))
    event["body"] = json.dumps({"name": "Jane Doe", "email": email})
    return event


def health_problem(function: str, response: dict[str, Any]) -> str | None:
    """Why ``response`` (what moto's Invoke returned, parsed) is not a healthy 200, or None."""
    if response.get("FunctionError"):
        return f"{function}: GET /health failed in the function: {response.get('Payload')}"
    payload = response.get("Payload")
    if not isinstance(payload, dict) or payload.get("statusCode") != 200:
        return f"{function}: GET /health answered {payload!r}, not 200"
    body = json.loads(payload.get("body") or "null")
    if not isinstance(body, dict) or body.get("status") != "ok":
        return f"{function}: GET /health answered 200 with {payload.get('body')!r}"
    return None
