"""Property-based fuzz of each function's own OpenAPI schema (schemathesis + hypothesis).

In-process against the ASGI app inside moto's ``mock_aws``: valid and invalid requests
generated from the schema must never answer 5xx, and every answer must be documented
(status code, content type, body schema); valid data is accepted, invalid data refused,
an undeclared method is a 405 whose ``Allow`` lists the path's methods. Every
``functions/<name>/app.py`` is fuzzed, the worker's HTTP side included: a new folder needs
no edit here. Derandomized and bounded, so CI is stable.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
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

from infra.durable_resources import create_task_queues
from shared.settings import get_settings
from tests.support.aws_resources import AwsState, mocked_aws
from tests.support.sam import function_folders

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
# In multipart every part is bytes: a "file" generated as null or a number is sent as a valid file
# ("null"), so a schema violation there cannot be expressed, and accepting it is right.
MULTIPART_CHECKS = [check for check in CHECKS if check is not negative_data_rejection]
# A body's real type is sniffed from its bytes, which no schema can describe: a well-formed
# request of a type not allowed (an upload) is rightly refused with a documented 415.
POSITIVE = PositiveDataAcceptanceConfig(expected_statuses=[*POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES, "415"])
FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module", autouse=True)
def aws() -> Iterator[AwsState]:
    with mocked_aws() as state, pytest.MonkeyPatch.context() as env:
        # The worker's /queue route sends to the durable queue.
        env.setenv("TASK_QUEUE_URL", create_task_queues("fuzz-tasks").url)
        get_settings.cache_clear()
        yield state
    get_settings.cache_clear()


def fuzz_test(name: str) -> Callable[[Any], None]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", importlib.import_module(f"functions.{name}.app").app)
    schema.config.checks.positive_data_acceptance = POSITIVE

    @schema.parametrize()
    @FUZZ
    def test(case: Any) -> None:
        case.call_and_validate(checks=MULTIPART_CHECKS if case.media_type == "multipart/form-data" else CHECKS)

    test.__name__ = test.__qualname__ = f"test_{name}_schema"
    return test  # type: ignore[no-any-return]


for _name in function_folders():
    globals()[f"test_{_name}_schema"] = fuzz_test(_name)


def test_the_fuzz_reached_storage(aws: AwsState) -> None:
    """The generated requests were not all rejected: some really wrote to moto."""
    assert aws.items(aws.settings.users_table)
    assert aws.items(aws.settings.items_table)
    assert aws.s3_keys("uploads/")
