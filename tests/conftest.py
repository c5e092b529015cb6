from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

# Tests never reach real AWS: fake credentials and a region before anything imports boto3.
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SESSION_TOKEN="testing",
    AWS_SECURITY_TOKEN="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_REGION="us-east-1",
    LOG_FORMAT="json",
)
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("AWS_LAMBDA_RUNTIME_API", None)

from infra.template import template

# The names of template.yaml's tables and buckets, as the functions get them (USERS_TABLE=...).
os.environ.update(template().name_environment())

from shared.background import handoff, lifecycle
from shared.logs import configure_logging
from shared.settings import get_settings
from tests.support.aws_resources import AwsState, mocked_aws
from tests.support.iam import COVERAGE, RoleGuard, RolePolicies
from tests.support.logs import LogCapture
from tests.support.sam import function_folders, logical_id

pytest_plugins = ["tests.support.fixtures", "tests.support.lifecycle", "tests.support.workers"]

# Before any app is imported: tests reconfigure logging, so loggers must not keep the first configuration.
configure_logging("tests", cache_loggers=False)


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test gets its own notification log and freshly read settings."""
    log_file = tmp_path / "notifications.log"
    monkeypatch.setenv("NOTIFICATION_LOG_PATH", str(log_file))
    get_settings.cache_clear()
    yield log_file
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def no_task_handoff_left_behind() -> Iterator[None]:
    """A test that built an executor with a queue leaves no handoff (process-wide) to the next one,
    and no open or ended task (the lifecycle's memory is process-wide too: tests reuse task ids)."""
    lifecycle.reset()
    yield
    handoff.reset()
    lifecycle.reset()


@pytest.fixture
def notification_log(isolated_settings: Path) -> Path:
    return isolated_settings


@pytest.fixture
def logs() -> LogCapture:
    """The real logging pipeline, printing JSON into a buffer the test reads."""
    capture = LogCapture()
    configure_logging("tests", stream=capture.stream, cache_loggers=False)
    return capture


@pytest.fixture
def notifications_client() -> Iterator[TestClient]:
    from functions.notifications.app import app

    with TestClient(app) as client:
        yield client


def function_under_test(request: pytest.FixtureRequest) -> str | None:
    """``UsersFunction`` in tests/test_users.py: the function whose behaviour a module tests."""
    name = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    if name not in function_folders() or f"{logical_id(name)}Role" not in template_roles():
        return None
    return logical_id(name)


def template_roles() -> set[str]:
    from tests.support.sam import translated_template

    return {name for name, r in translated_template()["Resources"].items() if r["Type"] == "AWS::IAM::Role"}


@pytest.fixture
def state(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsState]:
    """moto's ``mock_aws`` holding template.yaml's tables, bucket, queues and SES sender.

    In ``tests/test_<name>.py`` the function's AWS calls are made as its role, exactly as the
    template gives it, with moto enforcing IAM: a call the role does not allow fails the test
    with AccessDenied (tests/support/iam.py).
    """
    function = function_under_test(request)
    guard = RoleGuard()
    with mocked_aws() as resources:
        if function:
            guard.install(RolePolicies.of(function), monkeypatch)
        try:
            yield resources
        finally:
            guard.uninstall()
            COVERAGE.add(guard)
    failure = guard.failure()
    if failure:
        pytest.fail(failure, pytrace=False)


def whole_suite(config: pytest.Config) -> bool:
    """Every test was selected (``pytest``, ``make test``): only then must every IAM statement be used."""
    option = config.option
    selected_all = config.args_source == pytest.Config.ArgsSource.TESTPATHS or [
        str(Path(arg).resolve()) for arg in config.args
    ] == [str(Path(config.rootpath, "tests"))]
    return bool(
        selected_all
        and not option.keyword
        and not option.markexpr
        and not option.deselect
        and not option.collectonly
        and not option.ignore
        and not option.ignore_glob
        and not getattr(option, "lf", False)
        and not getattr(option, "failedfirst", False)
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The whole suite fails when a permission of a function's role was never needed (tests/support/iam.py).

    Under xdist, judged on the controller once every worker sent what its tests used (tests/support/workers.py).
    """
    if hasattr(session.config, "workerinput"):  # an xdist worker
        return
    if whole_suite(session.config) and exitstatus == pytest.ExitCode.OK:
        COVERAGE.declare_every_role()
        if COVERAGE.failure():
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The permissions (action on resource) of the roles the tests ran as that no call ever needed."""
    failure = None if hasattr(terminalreporter.config, "workerinput") else COVERAGE.failure()
    if failure:
        fails = whole_suite(terminalreporter.config)
        terminalreporter.section("IAM permissions no test exercised" + (": the suite FAILS" if fails else ""))
        terminalreporter.write_line(failure)
