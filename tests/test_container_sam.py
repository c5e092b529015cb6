"""`sam local invoke` and `sam local start-api`: the `sam build` output in AWS's Lambda emulator, in containers.

The build is the session's (tests/support/fixtures.py, shared with test_sam_build.py). moto
runs as its image on a Docker network of this module's own, which the functions' containers
join to reach it by name: SAM's ``--docker-network host`` leaves them on the default bridge,
where the host's 127.0.0.1 is out of reach. Their variables come from infra/sam_local.py, as
``make sam-local`` gives them: the built template with AWS_ENDPOINT_URL declared (SAM passes a
function only the variables its template declares) and an env-vars file derived from it.
The invocations run two at a time; with no engine the module is skipped (or fails, under
REQUIRE_CONTAINER_ENGINE=1).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra import sam_local
from infra.lambda_events import sqs_event
from infra.runtime_api import EVENTS_DIR
from infra.servers import ServerProcess, eventually, free_port, parse_json_lines
from infra.template import template
from shared.settings import Settings
from tests.support.engine import docker, unique_name
from tests.support.fixtures import Build
from tests.support.moto_server import LocalAws
from tests.support.sam import logical_id, run_sam, sam_environment

pytestmark = pytest.mark.slow  # `make test-fast` leaves it out

# Every HTTP event of infra/events (every front door: HTTP API, REST API, ALB, Function URL),
# with the function its name starts with: a new function's events need no edit here.
HTTP_CASES = {
    path.name: logical_id(path.name.split("-")[0])
    for path in sorted(EVENTS_DIR.glob("*.json"))
    if not path.name.startswith("worker-")
}


@dataclass
class Invoked:
    result: Any
    events: list[dict[str, Any]]
    output: str


@dataclass
class Network:
    name: str
    aws: LocalAws

    @property
    def endpoint(self) -> str:
        return f"http://{self.name}:{sam_local.MOTO_PORT}"


@pytest.fixture(scope="module")
def network(docker_engine: None) -> Iterator[Network]:
    name = unique_name("sam")
    try:
        url = sam_local.start_moto(name, free_port())
        yield Network(name, LocalAws(url, sam_local.provision(url)))
    finally:
        sam_local.remove_moto(name)


@pytest.fixture(scope="module")
def invoke(network: Network, sam_build: Build, tmp_path_factory: pytest.TempPathFactory) -> Any:
    directory = tmp_path_factory.mktemp("sam-local")
    template = sam_local.local_template(sam_build.directory)
    queues = {
        queue: sam_local.queue_url_at(network.endpoint, url) for queue, url in network.aws.resources["queues"].items()
    }
    variables = sam_local.environment_variables(sam_build.template, network.endpoint, queues)
    env_vars = directory / "env.json"
    env_vars.write_text(json.dumps(variables))

    def run(function: str, event: Path) -> Invoked:
        args = ["local", "invoke", function, "--template", str(template), "--event", str(event)]
        args += ["--env-vars", str(env_vars), "--docker-network", network.name, "--skip-pull-image"]
        started = time.monotonic()
        result = run_sam(args, directory / "config", timeout=300)
        print(f"sam local invoke {function} {event.name}: {time.monotonic() - started:.1f}s")
        assert result.returncode == 0, result.stdout + result.stderr
        return Invoked(
            json.loads(result.stdout.strip().splitlines()[-1]), parse_json_lines(result.stderr), result.stderr
        )

    return run


@pytest.fixture(scope="module")
def invocations(invoke: Any, network: Network, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Invoked]:
    """Each function with each of its events of infra/events, two at a time; the worker also with the upload queued."""
    queued = tmp_path_factory.mktemp("sqs") / "queued-upload.json"

    def upload_then_work() -> dict[str, Invoked]:
        uploaded = invoke("UploadsFunction", EVENTS_DIR / "uploads-upload-http-api.json")
        queued.write_text(json.dumps(sqs_event(network.aws.take_messages("files.process_upload"))))
        return {"uploads-upload-http-api.json": uploaded, "queued-upload": invoke("WorkerFunction", queued)}

    cases = {name: (function, EVENTS_DIR / name) for name, function in HTTP_CASES.items()}
    cases["worker-sqs-task.json"] = ("WorkerFunction", EVENTS_DIR / "worker-sqs-task.json")
    del cases["uploads-upload-http-api.json"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        chained = pool.submit(upload_then_work)
        futures = {name: pool.submit(invoke, function, path) for name, (function, path) in cases.items()}
        return {**{name: future.result() for name, future in futures.items()}, **chained.result()}


@pytest.mark.parametrize("event", sorted(HTTP_CASES))
def test_each_http_function_answers_then_runs_its_tasks(invocations: dict[str, Invoked], event: str) -> None:
    invoked = invocations[event]
    assert 200 <= invoked.result.get("statusCode", 0) < 300, invoked.output
    names = [line.get("event") for line in invoked.events]
    assert "request.completed" in names, invoked.output
    after = names[names.index("request.completed") :]
    assert "task.succeeded" in after, invoked.output
    assert not {"task.failed", "task.enqueue_failed", "task.cancelled"} & set(names), invoked.output


def test_the_functions_background_effects_are_in_moto(invocations: dict[str, Invoked], network: Network) -> None:
    settings = Settings()
    user = json.loads(invocations["users-register-http-api.json"].result["body"])
    stored = [item["id"]["S"] for item in network.aws.table_items(settings.users_table) if item.get("name")]
    assert stored == [user["id"]]
    audit = [item["subject"]["S"] for item in network.aws.table_items(settings.audit_table)]
    assert f"user#{user['id']}" in audit
    item = json.loads(invocations["items-create-http-api.json"].result["body"])
    assert [row["id"]["S"] for row in network.aws.table_items(settings.items_table)] == [item["id"]]
    assert item["id"] in json.dumps(network.aws.table_items(settings.search_table))


def test_the_worker_reports_its_batch_and_runs_the_sample_task(invocations: dict[str, Invoked]) -> None:
    invoked = invocations["worker-sqs-task.json"]
    assert invoked.result == {"batchItemFailures": []}, invoked.output
    succeeded = [line for line in invoked.events if line.get("event") == "task.succeeded"]
    assert [(line["task"], line["backend"]) for line in succeeded] == [("notifications.write_notification", "sqs")]


def test_the_worker_processes_the_upload_the_uploads_function_queued(
    invocations: dict[str, Invoked], network: Network
) -> None:
    settings = Settings()
    invoked = invocations["queued-upload"]
    assert invoked.result == {"batchItemFailures": []}, invoked.output
    upload_id = json.loads(invocations["uploads-upload-http-api.json"].result["body"])["id"]
    upload = network.aws.client("dynamodb").get_item(TableName=settings.uploads_table, Key={"id": {"S": upload_id}})
    assert upload["Item"]["status"]["S"] == "processed", upload
    assert len(upload["Item"]["thumbnails"]["L"]) == len(settings.thumbnail_sizes)


@pytest.fixture
def sam_local_api(docker_engine: None, sam_build: Build, tmp_path: Path) -> Iterator[tuple[ServerProcess, LocalAws]]:
    """``make sam-local``'s command on free ports, with this run's names; stopped with SIGTERM."""
    name, port, aws_port = unique_name("sam-api"), free_port(), free_port()
    command = [sys.executable, "-m", "infra.sam_local", "--build-dir", str(sam_build.directory), "--name", name]
    command += ["--port", str(port), "--aws-port", str(aws_port)]
    server = ServerProcess(command, sam_environment(tmp_path / "config"), port)
    try:
        eventually(lambda: port_answers(server), timeout=120, what="sam local start-api")
        yield server, LocalAws(f"http://127.0.0.1:{aws_port}", {})
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0, server.output()
        assert docker("ps", "--all", "--quiet", "--filter", f"name={name}").stdout.strip() == ""
        assert docker("network", "ls", "--quiet", "--filter", f"name={name}").stdout.strip() == ""
    finally:
        server.close()
        sam_local.remove_moto(name)


def port_answers(server: ServerProcess) -> bool:
    if server.process.poll() is not None:
        raise AssertionError(f"infra.sam_local exited with {server.process.returncode}:\n{server.output()}")
    try:
        httpx.get(f"{server.base_url}/notifications/health", timeout=60)
    except httpx.TransportError:
        time.sleep(0.5)
        return False
    return True


def test_sam_local_start_api_serves_every_function_against_moto(
    sam_local_api: tuple[ServerProcess, LocalAws],
) -> None:
    server, aws = sam_local_api
    settings = Settings()
    http = httpx.Client(base_url=server.base_url, timeout=120)
    response = http.post("/notifications/send-notification/foo@example.com")
    assert response.json() == {"message": "Notification sent in the background"}
    eventually(lambda: "notifications.write_notification" in succeeded_tasks(server), timeout=30)

    response = http.post("/users/users", json={"name": "Ada Lovelace", "email": "ada@example.com"})
    assert response.status_code == 201, response.text
    user_id = response.json()["id"]
    audit = eventually(
        lambda: [i for i in aws.table_items(settings.audit_table) if i["subject"]["S"] == f"user#{user_id}"]
    )
    assert [record["action"]["S"] for record in audit] == ["user.registered"]

    response = http.post("/items/items", json={"name": "Blue ceramic mug", "tags": ["kitchen"]})
    assert response.status_code == 201, response.text
    item_id = response.json()["id"]
    eventually(lambda: item_id in json.dumps(aws.table_items(settings.search_table)))

    # A text file: `sam local start-api` answers 502 to binary bodies sent to an HTTP API
    # (aws-sam-cli#3110, #7927); test_the_worker_processes_the_upload... sends a PNG through `sam local invoke`.
    notes = {"file": ("notes.txt", b"Background tasks, for real.\n", "text/plain")}
    response = http.post("/uploads/uploads", files=notes)
    assert response.status_code == 202, response.text
    upload_id = response.json()["id"]
    keys = [obj["Key"] for obj in aws.client("s3").list_objects_v2(Bucket=settings.uploads_bucket)["Contents"]]
    assert keys == [f"uploads/{upload_id}/notes.txt"]
    aws.resources["task_queue_url"] = f"{aws.endpoint}/123456789012/{template().local_names(environ={})['TaskQueue']}"
    (message,) = aws.take_messages("files.process_upload")
    assert json.loads(message["Body"])["args"] == [upload_id]


def succeeded_tasks(server: ServerProcess) -> list[str]:
    return [line["task"] for line in parse_json_lines(server.output()) if line.get("event") == "task.succeeded"]
