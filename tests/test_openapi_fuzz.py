"""Property-based fuzz of each function's own OpenAPI schema (schemathesis + hypothesis).

In-process against the ASGI app inside moto's ``mock_aws``: valid and invalid requests
generated from the schema must never answer 5xx, and every answer must be documented
(status code, content type, body schema). Derandomized and bounded, so CI is stable.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from functions.items.app import app as items_app
from functions.uploads.app import app as uploads_app
from functions.users.app import app as users_app
from tests.support.aws_resources import AwsState, mocked_aws

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
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


def test_the_fuzz_reached_storage(aws: AwsState) -> None:
    """The generated requests were not all rejected: some really wrote to moto."""
    assert aws.items(aws.settings.users_table)
    assert aws.items(aws.settings.items_table)
    assert aws.s3_keys("uploads/")
