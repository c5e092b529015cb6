"""The roles template.yaml gives the functions are enough, and each of their permissions is needed.

Every ``tests/test_<name>.py`` already runs as its function's role (the ``state`` fixture,
tests/support/iam.py). Here: that a role short of one statement makes the behaviour fail
with AccessDenied, in the request and in a background task alike, and the paths those
tests do not take (the durable enqueue, a sender other than ``MailSender``). Then, per
function, one scenario of all its behaviours that call AWS (SCENARIOS): with the whole role it
needs every grant (each action of each statement, on each of its resources), and without any
one grant something is denied. A whole-suite run also fails when a grant was never needed
(conftest's ``pytest_sessionfinish``).
"""

from __future__ import annotations

import importlib
import io
import re
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

import functions.uploads.app as uploads_module
from functions.items.app import app as items_app
from functions.notifications.app import app as notifications_app
from functions.uploads.app import app as uploads_app
from functions.users.app import app as users_app
from infra.servers import eventually
from infra.template import template
from shared import aws
from shared.settings import get_settings
from shared.worker.poller import lambda_record
from tests.support.aws_resources import AwsState, mocked_aws
from tests.support.event_source import EventSourceMapping, enqueue
from tests.support.iam import COVERAGE, Coverage, Grant, RoleGuard, RolePolicies, function_roles, short
from tests.support.logs import LogCapture
from tests.support.sqs_queues import FakeLambdaContext, executor_from_settings
from tests.support.workers import COVERAGE_OUTPUT, receive

JANE = {"name": "Jane Doe", "email": "jane@example.com"}
MiB = 1024 * 1024


@pytest.fixture
def aws_state() -> Iterator[AwsState]:
    with mocked_aws() as state:
        yield state


def run_as(policies: RolePolicies, monkeypatch: pytest.MonkeyPatch) -> RoleGuard:
    guard = RoleGuard()
    guard.install(policies, monkeypatch)
    return guard


@pytest.fixture
def guards() -> Iterator[list[RoleGuard]]:
    installed: list[RoleGuard] = []
    yield installed
    for guard in installed:
        guard.uninstall()
        COVERAGE.add(guard)


def test_without_its_table_policy_registration_is_denied(
    aws_state: AwsState, monkeypatch: pytest.MonkeyPatch, guards: list[RoleGuard]
) -> None:
    role = RolePolicies.of("UsersFunction")
    guards.append(guard := run_as(role.without(role.naming(aws_state.settings.users_table)), monkeypatch))
    with TestClient(users_app, raise_server_exceptions=False) as client:
        response = client.post("/users", json=JANE)
    assert response.status_code == 500
    failure = guard.failure()
    assert failure is not None
    assert failure.startswith("AccessDenied: UsersFunction's role in template.yaml does not allow dynamodb:PutItem on ")
    assert f":table/{aws_state.settings.users_table}" in failure
    assert aws_state.items(aws_state.settings.users_table) == []


def test_without_the_mail_policy_the_welcome_email_task_is_denied(
    aws_state: AwsState, monkeypatch: pytest.MonkeyPatch, guards: list[RoleGuard], logs: LogCapture
) -> None:
    """The response is fine (201); the background task fails, which only a log line would tell without the guard."""
    guards.append(guard := run_as(RolePolicies.of("UsersFunction").without("SendMailPolicy"), monkeypatch))
    with TestClient(users_app) as client:
        assert client.post("/users", json=JANE).status_code == 201
    sender = aws_state.settings.mail_sender
    assert guard.failure() == (
        "AccessDenied: UsersFunction's role in template.yaml does not allow "
        f"ses:SendEmail on arn:aws:ses:us-east-1:123456789012:identity/{sender} (add the statement to its Policies)"
    )
    [failed] = logs.named("task.failed")
    assert "AccessDenied" in failed["error"]
    assert aws_state.sent_emails() == []


def test_the_role_sends_from_mail_sender_and_from_no_other_address(
    aws_state: AwsState, monkeypatch: pytest.MonkeyPatch, guards: list[RoleGuard]
) -> None:
    guards.append(guard := run_as(RolePolicies.of("UsersFunction"), monkeypatch))
    with TestClient(users_app) as client:
        assert client.post("/users", json=JANE).status_code == 201
    assert guard.failure() is None
    assert len(aws_state.sent_emails()) == 1

    from shared import aws

    aws.ses().verify_email_identity(EmailAddress="other@example.com")  # verified, yet not the template's sender
    monkeypatch.setenv("MAIL_SENDER", "other@example.com")
    get_settings.cache_clear()
    with TestClient(users_app) as client:
        assert client.post("/users", json={**JANE, "email": "joe@example.com"}).status_code == 201
    assert guard.failure() is not None
    assert "ses:SendEmail on arn:aws:ses:us-east-1:123456789012:identity/other@example.com" in str(guard.failure())
    assert len(aws_state.sent_emails()) == 1


@pytest.mark.parametrize("granted", [True, False])
def test_durable_tasks_are_enqueued_with_the_shared_enqueue_policy(
    aws_state: AwsState, monkeypatch: pytest.MonkeyPatch, guards: list[RoleGuard], granted: bool
) -> None:
    from shared import aws

    queue = aws.sqs().get_queue_url(QueueName=template().local_names()["TaskQueue"])["QueueUrl"]
    monkeypatch.setenv("TASK_QUEUE_URL", queue)
    monkeypatch.setenv("DURABLE_TASKS", "email.send_welcome")
    monkeypatch.setenv("TASK_ENQUEUE_BACKOFF_SECONDS", "0")
    get_settings.cache_clear()
    role = RolePolicies.of("UsersFunction")
    guards.append(guard := run_as(role if granted else role.without("EnqueueDurableTasksPolicy"), monkeypatch))
    with executor_from_settings(users_app), TestClient(users_app) as client:
        assert client.post("/users", json=JANE).status_code == 201
    queued = aws.sqs().receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
    if granted:
        assert guard.failure() is None
        assert len(queued) == 1
    else:
        assert f"sqs:SendMessage on arn:aws:sqs:us-east-1:123456789012:{queue.rsplit('/', 1)[-1]}" in str(
            guard.failure()
        )
        assert queued == []


def test_the_worker_role_runs_the_queued_welcome_email(
    aws_state: AwsState, monkeypatch: pytest.MonkeyPatch, guards: list[RoleGuard], logs: LogCapture
) -> None:
    """Enqueued by the users function, run by the worker as Lambda would (on another thread, as its role)."""
    from shared import aws
    from shared.worker import make_sqs_handler

    handler = make_sqs_handler()  # functions.worker.sqs.handler, built afresh: its worker keeps its first settings

    queue = aws.sqs().get_queue_url(QueueName=template().local_names()["TaskQueue"])["QueueUrl"]
    monkeypatch.setenv("TASK_QUEUE_URL", queue)
    monkeypatch.setenv("DURABLE_TASKS", "email.send_welcome")
    get_settings.cache_clear()
    with executor_from_settings(users_app), TestClient(users_app) as client:
        assert client.post("/users", json=JANE).status_code == 201
    messages = aws.sqs().receive_message(
        QueueUrl=queue, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"]
    )["Messages"]
    arn = aws.sqs().get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    event = {"Records": [lambda_record(m, arn, "us-east-1") for m in messages]}  # type: ignore[arg-type]

    guards.append(guard := run_as(RolePolicies.of("WorkerFunction"), monkeypatch))
    with ThreadPoolExecutor(1) as lambda_thread:
        result = lambda_thread.submit(handler, event, FakeLambdaContext()).result()
    assert result == {"batchItemFailures": []}
    assert guard.failure() is None
    assert [email.destinations["ToAddresses"] for email in aws_state.sent_emails()] == [[JANE["email"]]]
    assert logs.named("task.succeeded", task="email.send_welcome")


def test_the_statements_a_behaviour_needed_are_told_from_those_it_did_not(
    aws_state: AwsState, monkeypatch: pytest.MonkeyPatch, guards: list[RoleGuard]
) -> None:
    """What the end-of-suite report ("IAM permissions no test exercised") is made of."""
    role = RolePolicies.of("UsersFunction")
    guards.append(guard := run_as(role, monkeypatch))
    with TestClient(users_app) as client:
        assert client.post("/users", json=JANE).status_code == 201
    used = {statement.policy for statement in guard.used}
    assert used == {
        role.naming(aws_state.settings.users_table),
        role.naming(aws_state.settings.audit_table),
        "SendMailPolicy",
    }
    unused = {statement.policy for statement in role.statements()} - used
    assert unused == {"EnqueueDurableTasksPolicy"}


def test_an_action_the_code_never_calls_is_reported_though_its_statement_was_used(
    aws_state: AwsState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted per action on each resource: whole-table CRUD would pass a count of statements on one PutItem.

    (The broadened role is the test's own: it stays out of the suite's coverage.)
    """
    role = RolePolicies.of("UsersFunction")
    policy = role.naming(aws_state.settings.users_table)
    [statement] = role.inline[policy]["Statement"]
    broad = RolePolicies(
        role.function,
        {
            **role.inline,
            policy: {
                **role.inline[policy],
                "Statement": [{**statement, "Action": [*statement["Action"], "dynamodb:Scan"]}],
            },
        },
        role.managed,
    )
    guard = run_as(broad, monkeypatch)
    try:
        users(task_queue(), monkeypatch)
    finally:
        guard.uninstall()
    assert guard.failure() is None
    assert {str(grant) for grant in set(broad.grants()) - guard.used} == {
        f"UsersFunction: {policy}: StoreUsers dynamodb:Scan on table/{aws_state.settings.users_table}"
    }
    assert {grant.statement() for grant in guard.used} >= {
        grant.statement() for grant in broad.grants() if grant.policy == policy
    }


# --- every grant is needed: each function's behaviours, run with one action on one resource removed ---

Scenario = Callable[[str, pytest.MonkeyPatch], None]
"""Runs every behaviour of a function that calls AWS, given the task queue's URL."""


def http_behaviours(app: FastAPI, queue: str, monkeypatch: pytest.MonkeyPatch, durable: str, run: Scenario) -> None:
    """``run`` with its tasks in the process (after the response), then once more with ``durable`` sent to SQS."""
    monkeypatch.setenv("TASK_QUEUE_URL", queue)
    monkeypatch.setenv("TASK_ENQUEUE_BACKOFF_SECONDS", "0")
    for tasks in ("", durable):
        monkeypatch.setenv("DURABLE_TASKS", tasks)
        get_settings.cache_clear()
        with executor_from_settings(app):
            run(queue, monkeypatch)


def notifications(queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def run(queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
        with TestClient(notifications_app, raise_server_exceptions=False) as client:
            client.post("/send-notification/foo@example.com")

    http_behaviours(notifications_app, queue, monkeypatch, "notifications.write_notification", run)


def users(queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def run(queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
        with TestClient(users_app, raise_server_exceptions=False) as client:
            created = client.post("/users", json={**JANE, "email": f"{uuid.uuid4().hex}@example.com"}).json()
            client.get(f"/users/{created.get('id', '0' * 32)}")

    http_behaviours(users_app, queue, monkeypatch, "email.send_welcome", run)


def items(queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def run(queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
        with TestClient(items_app, raise_server_exceptions=False) as client:
            created = client.post("/items", json={"name": "Blue kettle", "tags": ["kitchen"]}).json()
            item_id = created.get("id", "0" * 32)
            client.get("/items/search", params={"q": "blue"})
            client.get(f"/items/{item_id}")
            client.delete(f"/items/{item_id}")

    http_behaviours(items_app, queue, monkeypatch, "search.index_item", run)


def uploads(queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def run(queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
        with TestClient(uploads_app, raise_server_exceptions=False) as client:
            created = client.post("/uploads", files={"file": ("pic.png", png(), "image/png")}).json()
            client.get(f"/uploads/{created.get('id', '0' * 32)}")
            client.get(created.get("task_url", f"/tasks/{'0' * 32}"))  # the status table (TrackTasks)

    def too_large_and_unrecorded() -> None:
        """A multipart upload past the limit (aborted), and an object whose record could not be written (deleted)."""
        with monkeypatch.context() as patch:
            patch.setenv("UPLOAD_MAX_BYTES", str(5 * MiB))
            patch.setenv("UPLOAD_PART_BYTES", str(5 * MiB))
            get_settings.cache_clear()
            with TestClient(uploads_app, raise_server_exceptions=False) as client:
                client.post("/uploads", files={"file": ("big.txt", b"y" * (5 * MiB + 1), "text/plain")})
        get_settings.cache_clear()
        with monkeypatch.context() as patch:
            patch.setattr(uploads_module, "_table", ThrottledTable)
            with TestClient(uploads_app, raise_server_exceptions=False) as client:
                client.post("/uploads", files={"file": ("pic.png", png(), "image/png")})

    http_behaviours(uploads_app, queue, monkeypatch, "files.process_upload", run)
    too_large_and_unrecorded()


class ThrottledTable:
    """The uploads table refusing the record's write, as DynamoDB does when throttled."""

    def put_item(self, **_: Any) -> None:
        error: Any = {"Error": {"Code": "ThrottlingException", "Message": "slow down"}, "ResponseMetadata": {}}
        raise ClientError(error, "PutItem")


def worker(queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each durable task, and one that fails, through the event source mapping (tests/test_worker.py)."""
    monkeypatch.setenv("TASK_QUEUE_URL", queue)
    get_settings.cache_clear()
    settings = get_settings()
    aws.s3().put_object(Bucket=settings.uploads_bucket, Key="uploads/u1/pic.png", Body=png())
    aws.dynamodb().Table(settings.uploads_table).put_item(
        Item={"id": "u1", "bucket": settings.uploads_bucket, "key": "uploads/u1/pic.png", "status": "uploaded"}
    )
    aws.dynamodb().Table(settings.items_table).put_item(Item={"id": "i1", "name": "Blue kettle", "tags": []})
    enqueue(queue, "email.send_welcome", JANE["email"], JANE["name"])
    enqueue(queue, "files.process_upload", "u1", tracked=True)  # its status steps (TrackTasks)
    enqueue(queue, "search.index_item", "i1")
    enqueue(queue, "audit.record", "user.registered", "user#u1", {"name": "Jane"}, event_id="e1")
    enqueue(queue, "files.process_upload", "no-such-upload")
    mapping = EventSourceMapping(queue)
    with ThreadPoolExecutor(1) as lambda_thread:
        lambda_thread.submit(mapping.poll_once).result()


SCENARIOS: dict[str, Scenario] = {
    "NotificationsFunction": notifications,
    "UsersFunction": users,
    "ItemsFunction": items,
    "UploadsFunction": uploads,
    "WorkerFunction": worker,
}


def scaffolded(function: str) -> Scenario:
    """A function ``make function`` wrote (infra/scaffold): its POST, GET and durable e-mail."""
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", function.removesuffix("Function")).lower()
    app: FastAPI = importlib.import_module(f"functions.{name}.app").app

    def scenario(queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
        def run(queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
            with TestClient(app, raise_server_exceptions=False) as client:
                created = client.post(f"/{name}", json={"email": "ada@example.com", "note": "two mugs"}).json()
                client.get(f"/{name}/{created.get('id', '0' * 32)}")

        http_behaviours(app, queue, monkeypatch, "email.send", run)

    return scenario


def scenario_for(function: str) -> Scenario:
    """Its own in SCENARIOS; else, for a scaffolded function, the scaffold's behaviours."""
    return SCENARIOS.get(function) or scaffolded(function)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (400, 300), "red").save(buffer, "PNG")
    return buffer.getvalue()


def task_queue() -> str:
    from shared import aws

    return aws.sqs().get_queue_url(QueueName=template().local_names()["TaskQueue"])["QueueUrl"]


@pytest.mark.parametrize("function", sorted(function_roles()))
def test_each_scenario_needs_every_action_on_every_resource_of_its_role_and_no_other(
    aws_state: AwsState, monkeypatch: pytest.MonkeyPatch, guards: list[RoleGuard], function: str
) -> None:
    role = RolePolicies.of(function)
    queue = task_queue()
    guards.append(guard := run_as(role, monkeypatch))
    scenario_for(function)(queue, monkeypatch)
    assert guard.failure() is None
    unused = sorted(map(str, set(role.grants()) - guard.used))
    assert unused == [], f"no behaviour of {function} needed these: remove them, or add the behaviour to SCENARIOS"


def every_grant() -> list[Any]:
    return [
        pytest.param(grant, id=f"{grant.role}-{grant.policy}-{grant.index}-{grant.action}-{short(grant.resource)}")
        for function in sorted(function_roles())
        for grant in RolePolicies.of(function).grants()
    ]


@pytest.mark.parametrize("grant", every_grant())
def test_without_any_one_action_on_any_one_resource_its_function_is_denied_something(
    aws_state: AwsState, monkeypatch: pytest.MonkeyPatch, guards: list[RoleGuard], grant: Grant
) -> None:
    """Each statement less one of its actions (or one action less one of its resources): the rest stays."""
    role = RolePolicies.of(grant.role)
    queue = task_queue()
    guard = run_as(role.without_grant(grant), monkeypatch)
    try:
        scenario_for(grant.role)(queue, monkeypatch)
    except Exception as error:  # a denied call may end the scenario early: what matters is that it was denied
        print(f"the scenario stopped: {error!r}")
    finally:
        guard.uninstall()
    assert guard.denied, f"{grant}: nothing of {grant.role} failed without it; remove it from template.yaml"


def test_a_permission_no_test_needed_fails_the_whole_suite() -> None:
    """conftest's pytest_sessionfinish fails a whole-suite run with this message, naming the action and resource."""
    coverage = Coverage()
    coverage.declare_every_role()
    *needed, unneeded = sorted(coverage.declared, key=str)
    coverage.used = set(needed)
    failure = coverage.failure()
    assert failure is not None
    assert failure.startswith("1 IAM permission(s) of template.yaml no test exercised (action on resource)")
    assert failure.endswith(f"\n  {unneeded}")
    coverage.used.add(unneeded)
    assert coverage.failure() is None


def test_under_xdist_a_grant_no_worker_needed_fails_the_suite_and_one_any_worker_needed_does_not() -> None:
    """Each worker sends what its tests used; the controller merges them all before it judges (workers.py)."""
    every = Coverage()
    every.declare_every_role()
    *needed, unneeded = sorted(every.declared, key=str)
    first, second = Coverage(), Coverage()
    first.declared, first.used = set(every.declared), set(needed[::2])
    second.declared, second.used = {unneeded, *needed[1::2]}, set(needed[1::2])
    assert first.failure() is not None and second.failure() is not None  # neither worker alone used all

    controller, images = Coverage(), set[str]()
    for worker in (first, second):
        receive({COVERAGE_OUTPUT: worker.export(), "exitstatus": 0}, controller, images)

    assert controller.declared == every.declared
    failure = controller.failure()
    assert failure is not None and failure.endswith(f"\n  {unneeded}") and failure.startswith("1 IAM permission(s)")
    third = Coverage()
    third.declared = third.used = {unneeded}
    receive({COVERAGE_OUTPUT: third.export()}, controller, images)
    assert controller.failure() is None
    assert not images


def test_one_grant_removed_leaves_the_rest_of_its_statement() -> None:
    statement = {"Sid": "S", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": ["r1", "r2"]}
    role = RolePolicies("F", {"P": {"Version": "2012-10-17", "Statement": [statement]}}, {})
    [get_r1, get_r2, put_r1, put_r2] = role.grants()
    assert (get_r1.action, get_r1.resource) == ("s3:GetObject", "r1")

    less = role.without_grant(get_r1)

    assert {(g.action, g.resource) for g in less.grants()} == {(g.action, g.resource) for g in (get_r2, put_r1, put_r2)}
    assert [s["Sid"] for s in less.inline["P"]["Statement"]] == ["S", "SRest"]  # Sids stay unique in a policy


# --- the task status table (docs/task-status.md) ----------------------------------------------


def test_without_the_status_statement_an_upload_is_still_accepted_and_processed_and_the_denial_is_logged(
    aws_state: AwsState, monkeypatch: pytest.MonkeyPatch, guards: list[RoleGuard], logs: LogCapture
) -> None:
    """Status writes are best-effort: denied, they are logged (and counted), failing neither request nor task."""
    role = RolePolicies.of("UploadsFunction")
    [status_statement] = [s for s in role.statements() if s.text.startswith("TrackTasks ")]
    guards.append(guard := run_as(role.replacing(status_statement, []), monkeypatch))
    with TestClient(uploads_app) as client:
        response = client.post("/uploads", files={"file": ("pic.png", png(), "image/png")})
        assert response.status_code == 202
        assert client.get(response.json()["status_url"]).json()["status"] == "processed"
    assert "dynamodb:BatchWriteItem on arn:aws:dynamodb:us-east-1:123456789012:table/fastapi-tasks-task-status" in str(
        guard.failure()
    )
    failed = eventually(lambda: len(found := logs.named("task.status_write_failed")) == 3 and found)
    assert [event["state"] for event in failed] == ["queued", "running", "succeeded"]
    assert logs.named("task.succeeded", task="files.process_upload")
