"""Property-based fuzz of each function's own OpenAPI schema (schemathesis + hypothesis).

In-process against the ASGI app inside moto's ``mock_aws``: valid and invalid requests
generated from the schema must never answer 5xx, and every answer must be documented
(status code, content type, body schema); valid data is accepted, invalid data refused,
an undeclared method is a 405 whose ``Allow`` lists the path's methods. Every function,
the worker's HTTP side included. Derandomized and bounded, so CI is stable.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config._checks import POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES, PositiveDataAcceptanceConfig
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from functions.items.app import app as items_app
from functions.notifications.app import app as notifications_app
from functions.uploads.app import app as uploads_app
from functions.users.app import app as users_app
from functions.worker.app import app as worker_app
from infra.durable_resources import create_task_queues
from shared.settings import get_settings
from tests.support.aws_resources import AwsState, mocked_aws

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    unsupported_method,
    allow_header_conformance,
]
FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)

users = schemathesis.openapi.from_asgi("/openapi.json", users_app)
items = schemathesis.openapi.from_asgi("/openapi.json", items_app)
uploads = schemathesis.openapi.from_asgi("/openapi.json", uploads_app)
# Uploads sniff the file's type from its bytes, which no schema can describe: a well-formed
# upload of a type not allowed is rightly refused with the documented 415.
uploads.config.checks.positive_data_acceptance = PositiveDataAcceptanceConfig(
    expected_statuses=[*POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES, "415"]
)
notifications = schemathesis.openapi.from_asgi("/openapi.json", notifications_app)
worker = schemathesis.openapi.from_asgi("/openapi.json", worker_app)


@pytest.fixture(scope="module", autouse=True)
def aws() -> Iterator[AwsState]:
    with mocked_aws() as state:
        yield state


def fuzz(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)


@users.parametrize()
@FUZZ
def test_users_schema(case: Any) -> None:
    fuzz(case)


@items.parametrize()
@FUZZ
def test_items_schema(case: Any) -> None:
    fuzz(case)


@uploads.parametrize()
@FUZZ
def test_uploads_schema(case: Any) -> None:
    fuzz(case)


@notifications.parametrize()
@FUZZ
def test_notifications_schema(case: Any) -> None:
    fuzz(case)


@pytest.fixture
def task_queue(aws: AwsState, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASK_QUEUE_URL", create_task_queues("fuzz-tasks").url)
    get_settings.cache_clear()


@worker.parametrize()
@FUZZ
def test_worker_schema(case: Any, task_queue: None) -> None:
    fuzz(case)


def test_the_fuzz_reached_storage(aws: AwsState) -> None:
    """The generated requests were not all rejected: some really wrote to moto."""
    assert aws.items(aws.settings.users_table)
    assert aws.items(aws.settings.items_table)
    assert aws.s3_keys("uploads/")
