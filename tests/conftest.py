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

from shared.background import handoff
from shared.logs import configure_logging
from shared.settings import get_settings
from tests.support.aws_resources import AwsState, mocked_aws
from tests.support.logs import LogCapture

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
    """A test that built an executor with a queue leaves no handoff (process-wide) to the next one."""
    yield
    handoff.reset()


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


@pytest.fixture
def state() -> Iterator[AwsState]:
    """moto's ``mock_aws`` holding the bucket, tables and SES sender the functions use."""
    with mocked_aws() as resources:
        yield resources
