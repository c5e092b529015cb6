"""`make deploy-rehearsal`: the session's `sam build` packaged, translated, deployed to moto's
CloudFormation on 127.0.0.1, read back, and deleted (infra/deploy_rehearsal.py)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws

from infra.deploy_checks import MOTO_CANNOT_CREATE, Stack
from infra.deploy_rehearsal import ROOT, Rehearsal, RehearsalFailed, main
from infra.json_lines import parse_json_lines
from infra.moto_lambda import health_event, health_problem
from tests.support.engine import engine_problem, require_engine
from tests.support.fixtures import Build
from tests.support.sam import http_functions

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def test_the_built_template_deploys_and_reads_back_then_leaves_only_what_it_retains(
    sam_build: Build, tmp_path: Path
) -> None:
    """With a container engine, each function also answers ``GET /<name>/health`` through moto's
    Lambda in Docker, and a registration's welcome e-mail is sent by the worker through the
    deployed queue; without one the rehearsal says why it did not invoke them
    (``REQUIRE_CONTAINER_ENGINE=1`` fails then, as the container tests do)."""
    engine = engine_problem()
    if engine is not None:
        require_engine()  # fails with REQUIRE_CONTAINER_ENGINE=1, else the rest is still rehearsed
    rehearsal = Rehearsal(tmp_path)
    rehearsal.rehearse(sam_build.directory / "template.yaml")
    checks = [line.split(":", 1)[0] for line in rehearsal.log if line.endswith(": ok")]
    assert checks == [
        "references",
        "stack",
        "resources",
        "outputs",
        "function environments",
        "event source mappings",
        "queues",
        "log groups",
        *(["invocations"] if engine is None else []),
        "after sam delete",
        "deleting what moto left",
        "nothing but the Retain resources",
    ]
    if engine is None:
        (invoked,) = [line for line in rehearsal.log if line.startswith("invocations through moto's Lambda")]
        assert [part.split(" (")[0] for part in invoked.split("200 from ", 1)[1].split(", ")] == [
            f"/{name}/health" for name in sorted(http_functions())
        ]
        assert any(
            line.startswith("a registration reached the worker through the deployed queue: 201")
            for line in rehearsal.log
        )
    else:
        assert f"invocations: skipped ({engine.split(' (')[0]}" in "\n".join(rehearsal.log)
    (created,) = [line for line in rehearsal.log if line.startswith("resources: ") and "created" in line]
    assert set(MOTO_CANNOT_CREATE) == {kind for kind in MOTO_CANNOT_CREATE if f"({kind})" in created}
    (left,) = [line for line in rehearsal.log if line.startswith("moto left ")]
    stack = sam_build.template["Resources"]
    policies_and_layers = sorted(
        name
        for name, resource in stack.items()
        if resource["Type"] in ("AWS::IAM::ManagedPolicy", "AWS::Serverless::LayerVersion")
    )
    names = left.removesuffix("; deleting them").rsplit(": ", 1)[1].split(", ")
    assert sorted(re.sub(r"[0-9a-f]{10}$", "", name) for name in names) == policies_and_layers  # SAM's version hash
    (retained,) = [line for line in rehearsal.log if "exactly the Retain resources" in line]
    assert "UsersTable" in retained
    assert "IdempotencyTable" not in retained


def broken_copy(build: Build, destination: Path, edit: Any) -> Path:
    """The built template with ``edit`` applied, its code paths made absolute, written to ``destination``."""
    template = yaml.safe_load((build.directory / "template.yaml").read_text())
    for resource in template["Resources"].values():
        properties = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if isinstance(properties.get(key), str):
                properties[key] = str(build.directory / properties[key])
    edit(template)
    destination.mkdir()
    path = destination / "template.yaml"
    path.write_text(yaml.safe_dump(template, sort_keys=False))
    return path


def test_a_broken_reference_fails_the_rehearsal_naming_the_resource(sam_build: Build, tmp_path: Path) -> None:
    """moto's CloudFormation answers a reference to nothing with a 500; CloudFormation rejects the change set."""

    def misspell_the_queue(template: dict[str, Any]) -> None:
        template["Resources"]["WorkerTaskSource"]["Properties"]["EventSourceArn"] = {
            "Fn::GetAtt": ["TaskQueues", "Arn"]
        }

    rehearsal = Rehearsal(tmp_path, invoke=False)  # it fails before any invocation: no images for moto's Lambda
    with pytest.raises(RehearsalFailed) as failure:
        rehearsal.rehearse(broken_copy(sam_build, tmp_path / "copy", misspell_the_queue))
    assert str(failure.value) == (
        "references: resource WorkerTaskSource refers to TaskQueues, which the template does not declare"
    )


def test_a_stage_of_samconfig_is_rehearsed_with_its_own_stack_name_and_parameters(tmp_path: Path) -> None:
    prod = Rehearsal(tmp_path, "prod")
    assert prod.stack_name == "fastapi-background-tasks-prod"
    assert prod.parameters["LogRetentionDays"] == "90"
    assert prod.parameters["AlarmEmail"] == "alarms@example.com"  # the conditional subscription, too
    assert Rehearsal(tmp_path).stack_name == "fastapi-background-tasks"


def test_an_unknown_stage_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config-env", "staging"]) == 2
    error = capsys.readouterr().err
    assert error == (
        "deploy rehearsal: samconfig.toml has no environment 'staging' (it has default, dev, prod); "
        "give --config-env one of those\n"
    )


def test_a_resource_moto_skipped_fails_unless_its_type_is_listed() -> None:
    """A newly skipped type fails the rehearsal, naming the resource; a listed one does not."""
    template = {
        "Resources": {
            "Queue": {"Type": "AWS::SQS::Queue"},
            "Alarm": {"Type": "AWS::CloudWatch::Alarm"},
            "Pipe": {"Type": "AWS::Pipes::Pipe"},
            "Optional": {"Type": "AWS::Pipes::Pipe", "Condition": "Never"},
        },
        "Conditions": {"Never": {"Fn::Equals": ["", "x"]}},
    }
    stack = Stack("s", template, client=lambda service: None, physical={"Queue": "url"})
    assert stack.skipped() == {"Alarm": "AWS::CloudWatch::Alarm", "Pipe": "AWS::Pipes::Pipe"}
    assert stack.check_created() == [
        "Pipe (AWS::Pipes::Pipe) was not created, and AWS::Pipes::Pipe is not one of the types moto cannot create"
    ]


def test_a_variable_naming_another_table_fails_naming_the_function_and_variable() -> None:
    """``USERS_TABLE: !Ref AuditTable`` deploys (the reference exists) and is caught when read back."""
    with mock_aws():
        client = partial(boto3.client, region_name="us-east-1")
        for table in ("users-1", "audit-1"):
            client("dynamodb").create_table(
                TableName=table,
                KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
        role = client("iam").create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as archive:
            archive.writestr("app.py", "def handler(event, context): pass\n")
        client("lambda").create_function(
            FunctionName="users-fn",
            Runtime="python3.12",
            Role=role,
            Handler="app.handler",
            Code={"ZipFile": code.getvalue()},
            Environment={"Variables": {"USERS_TABLE": "audit-1", "AUDIT_TABLE": "audit-1"}},
        )
        variables = {"USERS_TABLE": {"Ref": "AuditTable"}, "AUDIT_TABLE": {"Ref": "AuditTable"}}
        template = {
            "Resources": {
                "UsersFunction": {
                    "Type": "AWS::Lambda::Function",
                    "Properties": {"Environment": {"Variables": variables}},
                },
                "UsersTable": {"Type": "AWS::DynamoDB::Table"},
                "AuditTable": {"Type": "AWS::DynamoDB::Table"},
            }
        }
        physical = {"UsersFunction": "users-fn", "UsersTable": "users-1", "AuditTable": "audit-1"}
        stack = Stack("s", template, client=client, physical=physical)
        assert stack.check_function_environments() == [
            "UsersFunction: USERS_TABLE is 'audit-1', not UsersTable (users-1)"
        ]


def test_only_this_stacks_policies_and_layers_may_outlive_sam_delete_and_then_are_deleted() -> None:
    """moto deletes neither type with a stack: exactly the stack's own are allowed, then deleted;
    any other resource left, or a policy of no resource of the stack, still fails."""
    with mock_aws():
        client = partial(boto3.client, region_name="us-east-1")
        statement = {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "arn:aws:sqs:us-east-1:123456789012:q"}
        document = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
        policy = client("iam").create_policy(PolicyName="s-EnqueuePolicy-1", PolicyDocument=document)["Policy"]["Arn"]
        client("lambda").publish_layer_version(
            LayerName="s-DepsLayer-1", Content={"ZipFile": b"PK\x05\x06" + bytes(18)}
        )
        queue = client("sqs").create_queue(QueueName="s-queue")["QueueUrl"]
        template = {
            "Resources": {
                "EnqueuePolicy": {"Type": "AWS::IAM::ManagedPolicy"},
                "DepsLayer": {"Type": "AWS::Lambda::LayerVersion"},
                "Queue": {"Type": "AWS::SQS::Queue"},
            }
        }
        physical = {"EnqueuePolicy": policy, "DepsLayer": "", "Queue": queue}
        stack = Stack("s", template, client=client, physical=physical)
        assert stack.check_deleted() == ["Queue (AWS::SQS::Queue) is still there after the stack was deleted"]
        client("sqs").delete_queue(QueueUrl=queue)
        assert stack.check_deleted() == []
        assert stack.left_by_moto() == {
            "EnqueuePolicy": "AWS::IAM::ManagedPolicy",
            "DepsLayer": "AWS::Lambda::LayerVersion",
        }
        assert sorted(stack.check_deleted(moto_leaves=False)) == [
            "DepsLayer (AWS::Lambda::LayerVersion) is still there after the stack was deleted",
            "EnqueuePolicy (AWS::IAM::ManagedPolicy) is still there after the stack was deleted",
        ]
        stray = client("iam").create_policy(PolicyName="made-elsewhere", PolicyDocument=document)["Policy"]["Arn"]

        assert stack.delete_left_by_moto() == []

        assert stack.left_by_moto() == {}
        assert stack.check_deleted(moto_leaves=False) == []
        assert stack.check_nothing_else_left() == ["managed policy made-elsewhere is still there"]
        client("iam").delete_policy(PolicyArn=stray)
        assert stack.check_nothing_else_left() == []
        assert stack.check_deleted() == [
            "EnqueuePolicy (AWS::IAM::ManagedPolicy) was deleted: moto now deletes it, "
            "take AWS::IAM::ManagedPolicy off MOTO_DOES_NOT_DELETE",
            "DepsLayer (AWS::Lambda::LayerVersion) was deleted: moto now deletes it, "
            "take AWS::Lambda::LayerVersion off MOTO_DOES_NOT_DELETE",
        ]


def test_lambda_once_serves_one_event_as_motos_lambda_containers_must(tmp_path: Path) -> None:
    """The Lambda image's entry point, run here without Docker: Lambda's runtime client runs the
    handler; the function's lines go to stderr, the response is the last line of stdout."""
    event = health_event("/notifications")
    command = [sys.executable, "-m", "infra.lambda_once", "functions/notifications/app.handler", json.dumps(event)]
    env = {**os.environ, "LAMBDA_TASK_ROOT": str(ROOT), "AWS_LAMBDA_FUNCTION_NAME": "notifications"}
    env |= {"API_ROOT_PATH": "/notifications", "SERVICE_NAME": "notifications"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout.splitlines()[-1])
    assert response["statusCode"] == 200
    assert json.loads(response["body"]) == {"status": "ok", "service": "notifications"}
    assert health_problem("NotificationsFunction", {"Payload": response}) is None
    logged = parse_json_lines(result.stderr)
    assert [line["event"] for line in logged if line["event"] == "lambda_extension.registered"]  # as on Lambda
    assert [(line["route"], line["status"]) for line in logged if line["event"] == "request.completed"] == [
        ("/health", 200)
    ]

    failing = [sys.executable, "-m", "infra.lambda_once", "functions/notifications/app.no_such_handler", "{}"]
    result = subprocess.run(failing, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "errorType" in json.loads(result.stdout.splitlines()[-1])


def test_a_health_check_that_is_not_a_200_names_the_function() -> None:
    not_found = {"statusCode": 404, "body": '{"detail":"Not Found"}'}
    assert health_problem("UsersFunction", {"Payload": not_found}) == (
        f"UsersFunction: GET /health answered {not_found!r}, not 200"
    )
    crashed = {"errorType": "ImportError", "errorMessage": "No module named 'fastapi'"}
    assert health_problem("UsersFunction", {"FunctionError": "Unhandled", "Payload": crashed}) == (
        f"UsersFunction: GET /health failed in the function: {crashed}"
    )
