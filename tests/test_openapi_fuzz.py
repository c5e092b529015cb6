"""Property-based fuzz of each function's own OpenAPI schema (schemathesis + hypothesis).

In-process against the ASGI app inside moto's ``mock_aws``: valid and invalid requests
generated from the schema must never answer 5xx, and every answer must be documented
(status code, content type, body schema); valid data is accepted, invalid data refused,
an undeclared method is a 405 whose ``Allow`` lists the path's methods. Every
``functions/<name>/app.py`` is fuzzed, the worker's HTTP side included: a new folder needs
no edit here. Derandomized and bounded, so CI is stable.

Then the values schemas cannot describe: each generated request gets ``NaN``,
``Infinity``, ``1e400`` or a lone surrogate somewhere in its JSON body, or bytes that are
no UTF-8 text (a surrogate's, invalid ones) in a path segment, query value or header.
No answer may be a 5xx, and every answer with a body is RFC 8259 JSON in UTF-8.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.config._checks import POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES, PositiveDataAcceptanceConfig
from schemathesis.core.parameters import EncodedPath
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
from tests.support import regex_strategies
from tests.support.aws_resources import AwsState, mocked_aws
from tests.support.sam import function_folders

regex_strategies.install()  # before schemathesis collects this module's tests

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


EDGE_JSON = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", '"a\\ud800b"', '"\\udfff"', '"\\ud83d x"']
"""JSON text Python's ``json`` parses into values that no JSON or UTF-8 encoder renders back."""
EDGE_BYTES = [b"NaN", b"-Infinity", b"1e400", b"a\xed\xa0\x80b", b"\xed\xbf\xbf", b"\xff\xfe", b"\xc0\xaf", b"\x80"]
"""What a path segment, query value or header can carry: non-finite numbers, a lone surrogate's
bytes (WTF-8), bytes that are no UTF-8 at all."""
HEADERS = ["content-type", "accept", "user-agent", "x-request-id", "authorization", "x-amzn-trace-id"]
MARKER = "\u0000edge-value\u0000"
EDGE_FUZZ = settings(FUZZ, max_examples=40)


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, value
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _nodes(child, (*path, key))


def _with_edge(body: Any, data: st.DataObject, edge: str) -> bytes:
    """``body`` as JSON text with ``edge`` in place of one of its values, or as a new member."""
    nodes = list(_nodes(body))
    path, node = data.draw(st.sampled_from(nodes), label="where in the body")
    if isinstance(node, dict) and data.draw(st.booleans(), label="as a member"):
        node[data.draw(st.sampled_from(["x", MARKER]), label="member name")] = MARKER
    elif not path:
        body = MARKER
    else:
        parent = body
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = MARKER
    return json.dumps(body).replace(json.dumps(MARKER), edge).encode("utf-8")


def operations(name: str) -> list[Any]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", importlib.import_module(f"functions.{name}.app").app)
    return [result.ok() for result in schema.get_all_operations()]


def edge_fuzz_test(name: str) -> Callable[..., None]:
    @pytest.mark.parametrize("operation", operations(name), ids=lambda operation: operation.label)
    @given(data=st.data())
    @EDGE_FUZZ
    def test(operation: Any, data: st.DataObject) -> None:
        case = data.draw(operation.as_strategy(), label="case")
        places = ["query", "header"]
        if case.path_parameters:
            places.append("path")
        if case.media_type and "json" in case.media_type and case.body is not None:
            places += ["body", "body"]
        place = data.draw(st.sampled_from(places), label="place")
        params: dict[str, bytes] = {}
        if place == "body":
            case.body = _with_edge(case.body, data, data.draw(st.sampled_from(EDGE_JSON), label="edge"))
        else:
            edge = data.draw(st.sampled_from(EDGE_BYTES), label="edge")
            if place == "path":
                parameter = data.draw(st.sampled_from(sorted(case.path_parameters)), label="parameter")
                case.path_parameters[parameter] = EncodedPath(quote(edge, safe=""))
            elif place == "query":
                names = sorted({*(case.query or {}), *(p.name for p in operation.query), "q"})
                parameter = data.draw(st.sampled_from(names), label="parameter")
                case.query = {key: value for key, value in (case.query or {}).items() if key != parameter}
                params = {parameter: edge}  # bytes, percent-encoded as they are
            else:
                names = sorted({*(case.headers or {}), *(p.name for p in operation.headers), *HEADERS})
                header = data.draw(st.sampled_from(names), label="header")
                case.headers = {**(case.headers or {}), header: edge.decode("latin-1")}  # the octets as sent
        response = case.call_and_validate(checks=[not_a_server_error], params=params)
        if response.content:
            assert response.headers["content-type"] == ["application/json"], response.text
            json.loads(response.content.decode("utf-8"), parse_constant=_refuse_constant)

    test.__name__ = test.__qualname__ = f"test_{name}_edge_values"
    return test


def _refuse_constant(name: str) -> None:
    raise AssertionError(f"the answer holds {name}, which is not JSON")


for _name in function_folders():
    globals()[f"test_{_name}_edge_values"] = edge_fuzz_test(_name)


def test_the_fuzz_reached_storage(aws: AwsState) -> None:
    """The generated requests were not all rejected: some really wrote to moto."""
    assert aws.items(aws.settings.users_table)
    assert aws.items(aws.settings.items_table)
    assert aws.s3_keys("uploads/")
