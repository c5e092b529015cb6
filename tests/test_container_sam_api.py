"""`sam local start-api` (`make sam-local`): every function of the `sam build` output behind SAM's
HTTP API emulator, in AWS's Lambda emulator (containers), against moto's image on 127.0.0.1.

The build is the session's (tests/support/fixtures.py). Its own file, apart from the `sam local
invoke` tests of test_container_sam.py, so that the two run side by side under `make test`'s
workers. With no engine it is skipped (or fails, under REQUIRE_CONTAINER_ENGINE=1).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra import sam_local
from infra.servers import ServerProcess, eventually, free_port, parse_json_lines
from infra.template import template
from shared.settings import Settings
from tests.support.engine import docker, unique_name
from tests.support.fixtures import Build
from tests.support.moto_server import LocalAws
from tests.support.sam import sam_environment

# Its setup waits for the session's `sam build` (another worker may be making it): minutes under load.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # `make test-fast` leaves it out


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
        assert "No current session found" not in server.output(), "SAM's STS call went somewhere other than moto"
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
