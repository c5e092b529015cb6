"""`sam local invoke`: the `sam build` output in AWS's Lambda emulator, in containers
(`sam local start-api`: test_container_sam_api.py).

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
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infra import sam_local
from infra.lambda_events import sqs_event
from infra.runtime_api import EVENTS_DIR
from infra.servers import free_port, parse_json_lines
from shared.settings import Settings
from tests.support.engine import unique_name
from tests.support.fixtures import Build
from tests.support.moto_server import LocalAws
from tests.support.sam import logical_id, run_sam

# The module's invocations are one fixture: minutes when the suite's other workers share the cores.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # `make test-fast` leaves it out

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
        result = run_sam(args, directory / "config", timeout=300, aws_endpoint=network.aws.endpoint)
        print(f"sam local invoke {function} {event.name}: {time.monotonic() - started:.1f}s")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "No current session found" not in result.stderr, "SAM's STS call went somewhere other than moto"
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
