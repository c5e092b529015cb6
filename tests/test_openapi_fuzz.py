"""Property-based fuzz of each function's own OpenAPI schema (schemathesis + hypothesis).

In-process against the ASGI app inside moto's ``mock_aws``: valid and invalid requests
generated from the schema must never answer 5xx, and every answer must be documented
(status code, content type, body schema). Derandomized and bounded, so CI is stable.
Every function the template routes over HTTP is fuzzed: a new folder needs no edit here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
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

from tests.support.aws_resources import AwsState, mocked_aws
from tests.support.sam import http_functions

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


@pytest.fixture(scope="module", autouse=True)
def aws() -> Iterator[AwsState]:
    with mocked_aws() as state:
        yield state


def fuzz_test(name: str) -> Callable[[Any], None]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", importlib.import_module(f"functions.{name}.app").app)

    @schema.parametrize()
    @FUZZ
    def test(case: Any) -> None:
        case.call_and_validate(checks=CHECKS)

    test.__name__ = test.__qualname__ = f"test_{name}_schema"
    return test  # type: ignore[no-any-return]


for _name in http_functions():
    globals()[f"test_{_name}_schema"] = fuzz_test(_name)


def test_the_fuzz_reached_storage(aws: AwsState) -> None:
    """The generated requests were not all rejected: some really wrote to moto."""
    assert aws.items(aws.settings.users_table)
    assert aws.items(aws.settings.items_table)
    assert aws.s3_keys("uploads/")
