"""What `sam build` produces is what runs here: each artifact under Lambda's runtime client.

`sam build` runs once per session (it is slow) into a temporary directory, exactly as
`make sam-build` runs it. Each function's artifact then runs under python3.12 with the
real runtime client (awslambdaric) against the Runtime API emulator, with its layers and
the runtime's own packages on ``sys.path`` in Lambda's order, the environment the template
gives it, the events of ``infra/events``, and moto's server (a separate process) as AWS:
what `sam local invoke` does without Docker (test_container_sam.py runs `sam local` itself).
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from infra import sam_build
from infra.lambda_events import sqs_event
from infra.runtime_api import Invocation, lambda_environment, load_event
from infra.sam_build import GATED_LAYERS, SHARED_LAYER, canonical, lambda_python, pruned_imports
from infra.sam_local import environment_variables
from shared.settings import Settings
from tests.support.fixtures import Build
from tests.support.lock import versions_differing_from_the_lock
from tests.support.moto_server import LocalAws, running_moto
from tests.support.pillow_check import PILLOW_CHECK
from tests.support.sam import (
    LAMBDA_RUNTIME,
    ROOT,
    function_folders,
    logical_id,
)

REGION = "us-east-1"

# The first test's setup makes (or waits for) the session's `sam build`: minutes on a loaded machine.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def build(sam_build: Build) -> Build:
    """The session's `sam build` (tests/support/fixtures.py), shared with test_container_sam.py."""
    return sam_build


@pytest.fixture(scope="module")
def local_aws() -> Iterator[LocalAws]:
    """moto's server in its own process, provisioned by the same command docker-compose uses."""
    with running_moto() as aws:
        yield aws


@pytest.fixture
def invoke(
    build: Build, local_aws: LocalAws, isolated_settings: Path
) -> Callable[[str, Any], tuple[Invocation, list[dict[str, Any]]]]:
    """Run the built ``functions/<name>`` for one event; returns the invocation and its JSON logs."""

    def run(name: str, event: Any) -> tuple[Invocation, list[dict[str, Any]]]:
        spec = build.function(name)
        task_root = build.directory / spec.logical_id
        sys_path = [task_root, *(build.directory / layer / "python" for layer in spec.layers), LAMBDA_RUNTIME]
        env = {
            **environment_variables(build.template, local_aws.endpoint, local_aws.resources["queues"])[spec.logical_id],
            "PYTHONPATH": ":".join(map(str, sys_path)),
            "AWS_ENDPOINT_URL": local_aws.endpoint,
            "NOTIFICATION_LOG_PATH": str(isolated_settings),
        }
        python = lambda_python()
        assert python, "no CPython 3.12 here (Lambda's python3.12 runtime): install one, e.g. with pyenv"
        command = [python, "-m", "awslambdaric", spec.handler]
        with lambda_environment(spec.handler, env=env, command=command, cwd=task_root, function_name=name) as lam:
            invocation = lam.invoke(event, timeout=60).wait_free(60)
            logs = lam.logs()
        return invocation, logs

    return run


def test_each_function_is_its_code_and_the_layers_hold_the_dependencies(build: Build) -> None:
    for name in function_folders():
        artifact = build.directory / logical_id(name)
        assert sorted(p.name for p in artifact.iterdir()) == ["functions", "shared"], name
        assert sorted(p.name for p in (artifact / "functions").iterdir()) == ["__init__.py", "__pycache__", name]
        # Bytecode for Lambda's interpreter: its code directory is read-only.
        assert list((artifact / "functions" / name / "__pycache__").glob("app.cpython-312.pyc"))
    dependencies = build.directory / "DependenciesLayer" / "python"
    assert (dependencies / "fastapi").is_dir()
    assert (dependencies / "mangum").is_dir()
    for absent in ("PIL", "aws_lambda_powertools", "dns", "uvicorn", "boto3", "botocore", "pytest", "moto"):
        assert not (dependencies / absent).exists(), absent
    assert (build.directory / "PillowLayer" / "python" / "PIL").is_dir()
    assert (build.directory / "PowertoolsLayer" / "python" / "aws_lambda_powertools").is_dir()


def test_the_layers_and_the_runtime_stand_in_carry_the_locked_versions(build: Build) -> None:
    layers = [build.directory / f"{layer}Layer" / "python" for layer in (SHARED_LAYER, *GATED_LAYERS)]
    assert versions_differing_from_the_lock([*layers, LAMBDA_RUNTIME]) == {}


def test_a_gated_layer_holds_its_own_distributions_and_finds_their_dependencies(build: Build) -> None:
    """Layers unpack into one directory: Powertools' typing-extensions comes from the Dependencies layer only."""
    shared_layer = build.directory / f"{SHARED_LAYER}Layer" / "python"
    elsewhere = {
        canonical(distribution.metadata["Name"])
        for distribution in importlib.metadata.distributions(path=[str(shared_layer), str(LAMBDA_RUNTIME)])
    }
    for layer, own in GATED_LAYERS.items():
        packages = build.directory / f"{layer}Layer" / "python"
        installed = list(importlib.metadata.distributions(path=[str(packages)]))
        assert {canonical(distribution.metadata["Name"]) for distribution in installed} == own
        for distribution in installed:
            for requirement in map(Requirement, distribution.requires or []):
                if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                    assert canonical(requirement.name) in elsewhere, f"{layer}Layer needs {requirement}"


def test_each_function_with_its_layers_stays_under_30_mb(build: Build) -> None:
    """What Lambda unpacks for a function: its own code and every layer it uses."""

    def size(artifact: Path) -> int:
        return sum(path.stat().st_size for path in artifact.rglob("*") if path.is_file())

    for name in function_folders():
        spec = build.function(name)
        total = size(build.directory / spec.logical_id) + sum(size(build.directory / layer) for layer in spec.layers)
        assert total < 30_000_000, f"{spec.logical_id} with {', '.join(spec.layers)}: {total / 1e6:.1f} MB"


def test_the_pruned_pillow_layer_still_thumbnails_every_accepted_type(build: Build) -> None:
    """Without AVIF, fonts and colour management (infra/sam_build.py PRUNED), PNG/JPEG/GIF/WebP still become WebP."""
    spec = build.function("worker")
    sys_path = [build.directory / spec.logical_id, *(build.directory / layer / "python" for layer in spec.layers)]
    python = lambda_python()
    assert python, "no CPython 3.12 here (Lambda's python3.12 runtime): install one, e.g. with pyenv"
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": ":".join(map(str, [*sys_path, LAMBDA_RUNTIME]))}
    result = subprocess.run([python, "-c", PILLOW_CHECK], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["sizes"] == {fmt: [128, 96] for fmt in ("PNG", "JPEG", "GIF", "WEBP")}
    assert (report["avif"], report["freetype2"]) == (False, False)


def test_a_function_importing_a_pruned_package_fails_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The layers leave out PRUNED packages: code reaching one (here through shared/) must not deploy."""
    for name in function_folders():
        assert pruned_imports(ROOT / "functions" / name / "app.py") == [], name
    project = tmp_path / "project"
    (project / "functions" / "probe").mkdir(parents=True)
    (project / "shared").mkdir()
    (project / "functions" / "__init__.py").write_text("")
    (project / "functions" / "probe" / "app.py").write_text("from shared.routes import router\n")
    (project / "shared" / "__init__.py").write_text("")
    (project / "shared" / "routes.py").write_text(
        "from aws_lambda_powertools.event_handler import APIGatewayHttpResolver\n"
        "from aws_lambda_powertools.utilities.batch import BatchProcessor\n"
    )
    monkeypatch.setattr(sam_build, "ROOT", project)

    assert pruned_imports(project / "functions" / "probe" / "app.py") == ["aws_lambda_powertools.event_handler"]
    with pytest.raises(SystemExit, match=r"functions/probe imports from aws_lambda_powertools\.event_handler.*PRUNED"):
        sam_build.build_function("Probe", tmp_path / "artifacts")
    assert not (tmp_path / "artifacts").exists()


def test_notifications_answers_then_writes_the_log(invoke: Any, isolated_settings: Path) -> None:
    invocation, logs = invoke("notifications", load_event("notifications-send-notification-http-api.json"))
    assert invocation.status == "success"
    assert invocation.result["statusCode"] == 200
    assert json.loads(invocation.result["body"]) == {"message": "Notification sent in the background"}
    assert isolated_settings.read_text() == "notification for foo@example.com: some notification\n"
    succeeded = [line for line in logs if line.get("event") == "task.succeeded"]
    assert [(line["task"], line["backend"], line["service"]) for line in succeeded] == [
        ("notifications.write_notification", "lambda-extension", "notifications")
    ]


def test_users_stores_the_user_and_queues_the_welcome_email(invoke: Any, local_aws: LocalAws) -> None:
    settings = Settings()
    invocation, _ = invoke("users", load_event("users-register-http-api.json"))
    assert invocation.result["statusCode"] == 201, invocation.result
    user = json.loads(invocation.result["body"])
    assert user["email"] == "jane@example.com"
    stored = [item for item in local_aws.table_items(settings.users_table) if item.get("name")]
    assert [item["id"]["S"] for item in stored] == [user["id"]]
    audit = local_aws.table_items(settings.audit_table)
    assert [item["subject"]["S"] for item in audit] == [f"user#{user['id']}"]
    (message,) = local_aws.take_messages("email.send_welcome")
    assert json.loads(message["Body"])["args"] == ["jane@example.com", "Jane Doe"]


def test_items_stores_the_item_and_indexes_it_after_the_response(invoke: Any, local_aws: LocalAws) -> None:
    settings = Settings()
    sent_before = local_aws.client("ses").get_send_quota()["SentLast24Hours"]
    invocation, _ = invoke("items", load_event("items-create-http-api.json"))
    assert invocation.result["statusCode"] == 201, invocation.result
    item = json.loads(invocation.result["body"])
    assert [row["id"]["S"] for row in local_aws.table_items(settings.items_table)] == [item["id"]]
    index = local_aws.table_items(settings.search_table)
    assert index
    assert item["id"] in json.dumps(index)
    assert local_aws.client("ses").get_send_quota()["SentLast24Hours"] == sent_before + 1


def test_an_upload_is_stored_then_the_worker_makes_its_thumbnails(invoke: Any, local_aws: LocalAws) -> None:
    """Uploads (202) queues files.process_upload; the built worker, with the Pillow layer, runs it."""
    settings = Settings()
    event = load_event("uploads-upload-http-api.json")
    invocation, _ = invoke("uploads", event)
    assert invocation.result["statusCode"] == 202, invocation.result
    upload_id = json.loads(invocation.result["body"])["id"]
    s3 = local_aws.client("s3")
    stored = [obj["Key"] for obj in s3.list_objects_v2(Bucket=settings.uploads_bucket).get("Contents", [])]
    assert len(stored) == 1
    assert b"\x89PNG" in base64.b64decode(event["body"])
    assert s3.get_object(Bucket=settings.uploads_bucket, Key=stored[0])["Body"].read().startswith(b"\x89PNG")

    messages = local_aws.take_messages("files.process_upload")
    assert [json.loads(m["Body"])["args"] for m in messages] == [[upload_id]]
    worked, logs = invoke("worker", sqs_event(messages))
    assert worked.result == {"batchItemFailures": []}, worked.result
    upload = local_aws.client("dynamodb").get_item(TableName=settings.uploads_table, Key={"id": {"S": upload_id}})
    assert upload["Item"]["status"]["S"] == "processed", upload
    thumbnails = [t["S"] for t in upload["Item"]["thumbnails"]["L"]]
    assert len(thumbnails) == len(settings.thumbnail_sizes)
    keys = {obj["Key"] for obj in s3.list_objects_v2(Bucket=settings.uploads_bucket)["Contents"]}
    assert set(thumbnails) <= keys
    assert [line["task"] for line in logs if line.get("event") == "task.succeeded"] == ["files.process_upload"]


def test_the_worker_runs_the_sample_queued_task(invoke: Any, isolated_settings: Path) -> None:
    invocation, logs = invoke("worker", load_event("worker-sqs-task.json"))
    assert invocation.result == {"batchItemFailures": []}
    assert isolated_settings.read_text() == "notification for foo@example.com: sent through the queue\n"
    ran = [line for line in logs if line.get("event") == "task.succeeded"]
    assert [(line["backend"], line["service"]) for line in ran] == [("sqs", "worker")]
