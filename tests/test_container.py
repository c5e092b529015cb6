"""The image, for real: built from the Dockerfile with plain `docker build`, run by the Docker engine.

The image is built once per run (``image``, tests/support/fixtures.py); the containers of a
module start together and are waited for together. With no engine these tests are skipped
(REQUIRE_CONTAINER_ENGINE=1, as CI sets it, fails them instead). test_dockerfile.py reads the
Dockerfile and runs its entry command without an engine; this is the same, inside one.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from packaging.utils import canonicalize_name
from PIL import Image

from infra.sam_build import PRUNED, pruned_imports
from infra.servers import eventually, free_port
from shared.settings import Settings
from tests.support.engine import Container, docker, running, start
from tests.support.lock import locked_versions
from tests.support.moto_server import LocalAws, running_moto
from tests.support.pillow_check import PILLOW_CHECK
from tests.support.sam import ROOT, function_folders

pytestmark = pytest.mark.slow  # `make test-fast` leaves it out

SITE_PACKAGES = "/opt/venv/lib/python3.12/site-packages"
NOTIFICATION = "notification for foo@example.com: some notification\n"
# The services the code calls, whose models the image keeps but for their prose.
AWS_SERVICES = ("dynamodb", "s3", "ses", "sqs", "sts")


def run_python(image: str, code: str, *args: str) -> str:
    """``python -c CODE ARGS`` in a throw-away container of ``image``; its stdout."""
    return docker("run", "--rm", "--entrypoint", "python", image, "-c", code, *args, timeout=300).stdout


@pytest.fixture(scope="module")
def servers(image: str) -> Iterator[dict[str, Container]]:
    """Every way the image serves, started together: as users run it, one function, read-only root."""
    published = ["--publish", "127.0.0.1::8000"]
    published += ["--env", "TASK_RUNNING_NOTICE_SECONDS=0.2"]  # task.running: the test's sign a task is under way
    started: dict[str, Container] = {}
    try:
        # --health-interval: dockerd 20.10 runs the first check only after the interval (30 s in the image).
        started["default"] = start(image, purpose="default", options=[*published, "--health-interval", "1s"])
        started["users"] = start(image, purpose="users", options=[*published, "--env", "FUNCTION=users"])
        started["read_only"] = start(
            image, purpose="read-only", options=[*published, "--read-only", "--tmpfs", "/tmp:rw,noexec,nosuid"]
        )
        for container in started.values():
            container.wait_healthy()
        yield started
    finally:
        for container in started.values():
            container.remove()


def requirement_names() -> set[str]:
    text = (ROOT / "requirements.txt").read_text()
    return {canonicalize_name(name) for name in re.findall(r"^([A-Za-z0-9._-]+)==", text, flags=re.MULTILINE)}


def pruned_distributions() -> set[str]:
    patterns = [pattern for patterns in PRUNED.values() for pattern in patterns if pattern.endswith(".dist-info")]
    return {canonicalize_name(pattern.split("-", 1)[0]) for pattern in patterns}


def test_the_image_carries_exactly_the_locked_packages(image: str) -> None:
    """requirements.txt (uv.lock's export) installed as locked; no pip, nothing else; PRUNED ones left out."""
    listing = run_python(
        image,
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))",
    )
    installed = {canonicalize_name(name): version for name, version in json.loads(listing).items()}
    locked = locked_versions()
    assert installed == {name: locked[name] for name in requirement_names() - pruned_distributions()}


CHECK_MODULES = """
import importlib, json, pathlib, pkgutil, sys
import shared, functions
names = [m.name for p in (shared, functions) for m in pkgutil.walk_packages(p.__path__, p.__name__ + ".")]
names += ["uvicorn", "awslambdaric", "mangum", "aws_lambda_powertools.utilities.batch",
          "aws_lambda_powertools.utilities.idempotency", "PIL.Image", "email_validator"]
for name in names:
    importlib.import_module(name)
site = pathlib.Path(sys.argv[1])
print(json.dumps({"imported": len(names), "left": {p: [str(x) for x in site.glob(p)] for p in sys.argv[2:]}}))
"""


def test_every_module_imports_in_the_image_without_what_it_prunes(image: str) -> None:
    """The Dockerfile prunes what infra/sam_build.py PRUNED leaves out of the layers, and nothing the code imports."""
    assert pruned_imports(ROOT / "shared" / "entrypoint.py") == []
    patterns = [pattern for patterns in PRUNED.values() for pattern in patterns]
    report = json.loads(run_python(image, CHECK_MODULES, SITE_PACKAGES, *patterns))
    assert report["imported"] > 20
    assert report["left"] == {pattern: [] for pattern in patterns}


def test_the_pruned_pillow_in_the_image_still_thumbnails_every_accepted_type(image: str) -> None:
    report = json.loads(run_python(image, PILLOW_CHECK))
    assert report["sizes"] == {fmt: [128, 96] for fmt in ("PNG", "JPEG", "GIF", "WEBP")}
    assert (report["avif"], report["freetype2"]) == (False, False)


MODELS = """
import json, sys, botocore, botocore.session
prose = lambda node: {k: "" if k == "documentation" and isinstance(v, str) else v for k, v in node.items()}
session = botocore.session.get_session()
loader = session.get_component("data_loader")
models = {}
for service in sys.argv[1:]:
    raw = loader.load_service_model(service, "service-2")
    models[service] = json.loads(json.dumps(raw), object_hook=prose)
services = len(session.get_available_services())
print(json.dumps({"version": botocore.__version__, "services": services, "models": models}))
"""


def test_botocore_in_the_image_keeps_every_service_model_but_its_prose(image: str) -> None:
    """The Dockerfile empties the prose of botocore's models: the same models otherwise, every key still there."""
    inside = json.loads(run_python(image, MODELS, *AWS_SERVICES))
    here_run = subprocess.run([sys.executable, "-c", MODELS, *AWS_SERVICES], capture_output=True, text=True, check=True)
    here = json.loads(here_run.stdout)
    assert inside["version"] == here["version"]
    assert inside["services"] == here["services"]
    assert inside["models"] == here["models"]


def test_every_function_on_one_port_and_the_tutorial_task_runs_after_the_response(
    servers: dict[str, Container],
) -> None:
    container = servers["default"]
    base = container.url
    assert httpx.get(f"{base}/health").json() == {"status": "ok", "functions": function_folders()}
    for name in function_folders():
        docs = httpx.get(f"{base}/{name}/docs")
        assert docs.status_code == 200, name
        assert f"/{name}/openapi.json" in docs.text
    response = httpx.post(f"{base}/notifications/send-notification/foo@example.com")
    assert response.json() == {"message": "Notification sent in the background"}
    request_id = response.headers["x-request-id"]
    logged = eventually(lambda: container.exec("cat", "/tmp/notifications.log", check=False).stdout)
    assert logged == NOTIFICATION
    ours = eventually(lambda: finished(container, request_id))
    assert [e["event"] for e in ours].index("request.completed") < [e["event"] for e in ours].index("task.succeeded")
    (succeeded,) = [e for e in ours if e["event"] == "task.succeeded"]
    assert succeeded["task"] == "notifications.write_notification"


def finished(container: Container, request_id: str) -> list[dict[str, object]] | None:
    """The log lines of request ``request_id`` once its task has succeeded."""
    ours = [e for e in container.events() if e.get("request_id") == request_id]
    return ours if any(e["event"] == "task.succeeded" for e in ours) else None


def test_function_env_serves_one_function_at_the_root(servers: dict[str, Container]) -> None:
    base = servers["users"].url
    assert httpx.get(f"{base}/health").json() == {"status": "ok", "service": "users"}
    assert httpx.get(f"{base}/openapi.json").json()["info"]["title"] == "users"
    assert httpx.get(f"{base}/notifications/health").status_code == 404


def test_the_server_runs_as_the_non_root_app_user(servers: dict[str, Container]) -> None:
    container = servers["default"]
    status = container.exec("cat", "/proc/1/status").stdout
    uids = re.search(r"^Uid:\s+(.*)$", status, flags=re.MULTILINE)
    assert uids is not None
    assert set(uids[1].split()) == {"10001"}
    assert container.exec("id", "-un").stdout.strip() == "app"


def test_the_healthcheck_reports_healthy(servers: dict[str, Container]) -> None:
    container = servers["default"]
    health = eventually(lambda: container.state()["Health"]["Status"] == "healthy" and container.state()["Health"])
    assert health["Log"][-1]["ExitCode"] == 0


def test_a_read_only_root_filesystem_still_serves(servers: dict[str, Container]) -> None:
    container = servers["read_only"]
    assert container.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    response = httpx.post(f"{container.url}/notifications/send-notification/foo@example.com")
    assert response.status_code == 200
    assert eventually(lambda: container.exec("cat", "/tmp/notifications.log", check=False).stdout) == NOTIFICATION
    refused = container.exec("touch", "/app/written", check=False)
    assert refused.returncode != 0
    assert "Read-only file system" in refused.stderr


@pytest.fixture(scope="module")
def slow_servers(image: str) -> Iterator[dict[str, Container]]:
    """The image's entry command serving tests/support/slow_app.py (mounted read-only), twice."""
    mount = ["--volume", f"{ROOT / 'tests' / 'support' / 'slow_app.py'}:/app/slow_app.py:ro"]
    published = ["--publish", "127.0.0.1::8000"]
    published += ["--env", "TASK_RUNNING_NOTICE_SECONDS=0.2"]  # task.running: the test's sign a task is under way
    started: dict[str, Container] = {}
    try:
        started["within"] = start(image, "serve", "--app", "slow_app:app", purpose="stop", options=[*mount, *published])
        started["beyond"] = start(
            image,
            "serve",
            "--app",
            "slow_app:app",
            purpose="stop-grace",
            options=[*mount, *published, "--env", "SHUTDOWN_GRACE_SECONDS=1"],
        )
        for container in started.values():
            container.wait_healthy()
        yield started
    finally:
        for container in started.values():
            container.remove()


def test_docker_stop_lets_the_in_flight_task_finish_then_exits_0(slow_servers: dict[str, Container]) -> None:
    container = slow_servers["within"]
    assert httpx.post(f"{container.url}/slow/stop", params={"seconds": 3}).json() == {"queued": 1}
    eventually(lambda: container.events("task.running"), timeout=10)
    assert container.stop(grace_s=30) == 0  # 137 would be SIGKILL at the end of the grace period
    (succeeded,) = container.events("task.succeeded")
    assert succeeded["task"].endswith("slow_write")
    assert container.events("task.cancelled") == []


def test_docker_stop_past_the_grace_period_logs_the_task_cancelled(slow_servers: dict[str, Container]) -> None:
    container = slow_servers["beyond"]
    assert httpx.post(f"{container.url}/slow/stop", params={"seconds": 120}).json() == {"queued": 1}
    eventually(lambda: container.events("task.running"), timeout=10)
    assert container.stop(grace_s=30) == 0
    (cancelled,) = container.events("task.cancelled")
    assert cancelled["task"].endswith("slow_write")
    assert container.events("task.succeeded") == []


@pytest.fixture(scope="module")
def host_aws() -> Iterator[LocalAws]:
    with running_moto() as aws:
        yield aws


def test_the_worker_command_runs_durable_tasks_against_moto_on_the_host(image: str, host_aws: LocalAws) -> None:
    """Registration and upload -> SQS -> the image's `worker` -> e-mail in SES, thumbnails in S3 (host network).

    Every AWS service the code calls (S3, DynamoDB, SQS, SES), from the image's pruned botocore.
    """
    settings = Settings()
    port = free_port()
    env = {
        "AWS_ENDPOINT_URL": host_aws.endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "TASK_QUEUE_URL": host_aws.resources["task_queue_url"],
        "DURABLE_TASKS": "email.send_welcome,files.process_upload",
        "WORKER_WAIT_SECONDS": "1",
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    options = ["--network", "host", *(f"--env={key}={value}" for key, value in env.items())]
    sent_before = host_aws.emails_sent()
    png = io.BytesIO()
    Image.new("RGB", (640, 480), (30, 144, 255)).save(png, "PNG")
    with (
        running(image, purpose="functions-host", options=options) as functions,
        running(image, "worker", purpose="worker-host", options=options) as worker,
    ):
        functions.wait_healthy(f"http://127.0.0.1:{port}/health")
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        registered = http.post("/users/users", json={"name": "Ada Lovelace", "email": "ada@example.com"})
        assert registered.status_code == 201, registered.text
        uploaded = http.post("/uploads/uploads", files={"file": ("blue.png", png.getvalue(), "image/png")})
        assert uploaded.status_code == 202, uploaded.text
        queued = eventually(lambda: logged(functions, "task.enqueued", 2))
        assert sorted(event["task"] for event in queued) == ["email.send_welcome", "files.process_upload"]
        succeeded = eventually(lambda: logged(worker, "task.succeeded", 2), timeout=60)
        assert sorted((e["task"], e["backend"]) for e in succeeded) == [
            ("email.send_welcome", "sqs"),
            ("files.process_upload", "sqs"),
        ]
    assert host_aws.emails_sent() == sent_before + 1
    upload_id = uploaded.json()["id"]
    table = host_aws.client("dynamodb")
    upload = table.get_item(TableName=settings.uploads_table, Key={"id": {"S": upload_id}})["Item"]
    assert upload["status"]["S"] == "processed"
    thumbnails = {thumbnail["S"] for thumbnail in upload["thumbnails"]["L"]}
    listed = host_aws.client("s3").list_objects_v2(Bucket=settings.uploads_bucket)["Contents"]
    assert len(thumbnails) == len(settings.thumbnail_sizes)
    assert thumbnails <= {obj["Key"] for obj in listed}


def logged(container: Container, event: str, count: int) -> list[dict[str, Any]] | None:
    """``count`` lines of ``event`` in the container's log, once they are all there."""
    found = container.events(event)
    return found if len(found) >= count else None
