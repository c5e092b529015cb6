"""The roles template.yaml gives the functions are enough, and moto proves a missing statement fails.

Every ``tests/test_<name>.py`` already runs as its function's role (the ``state`` fixture,
tests/support/iam.py). Here: that a role short of one statement makes the behaviour fail
with AccessDenied, in the request and in a background task alike, and the paths those
tests do not take (the durable enqueue, a sender other than ``MailSender``).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from functions.users.app import app as users_app
from infra.template import template
from shared.settings import get_settings
from shared.worker.poller import lambda_record
from tests.support.aws_resources import AwsState, mocked_aws
from tests.support.iam import COVERAGE, RoleGuard, RolePolicies
from tests.support.logs import LogCapture
from tests.support.sqs_queues import FakeLambdaContext, executor_from_settings

JANE = {"name": "Jane Doe", "email": "jane@example.com"}


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
    """What the end-of-suite report ("IAM statements no test exercised") is made of."""
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
