"""The lambda-extension backend's fallbacks, in-process (the real extension: test_lambda_extension.py)."""

from __future__ import annotations

import asyncio
import functools
import importlib
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from infra.runtime_api import RuntimeApiEmulator
from shared.background.lambda_extension import LambdaExtensionBackend
from shared.background.task import QueuedTask
from tests.support.logs import LogCapture


@pytest.fixture
def unregistered(monkeypatch: pytest.MonkeyPatch, logs: LogCapture) -> Iterator[LambdaExtensionBackend]:
    """The process-wide backend as it is without an Extensions API."""
    backend = LambdaExtensionBackend(None)
    backend.start()
    monkeypatch.setattr(LambdaExtensionBackend, "_instance", backend)
    yield backend


def test_without_runtime_api_it_warns_and_runs_tasks_before_returning(
    unregistered: LambdaExtensionBackend, logs: LogCapture
) -> None:
    ran: list[str] = []
    task = QueuedTask(func=ran.append, args=("done",), kwargs={}, name="tests.append")

    async def handler() -> None:
        with LambdaExtensionBackend.invocation("req-1", remaining_ms=30_000):
            await unregistered.dispatch([task])
            assert ran == ["done"]  # before the handler returns: nothing left to freeze

    asyncio.run(handler())
    [warning] = logs.named("lambda_extension.unavailable")
    assert warning["level"] == "warning"
    assert "AWS_LAMBDA_RUNTIME_API" in warning["reason"]
    assert logs.named("task.succeeded", task="tests.append", backend="lambda-before-response")


def test_a_registration_refused_falls_back_loudly() -> None:
    with RuntimeApiEmulator(extensions_api=False) as api:
        backend = LambdaExtensionBackend(api.address)
        backend.start()
    assert not backend.registered
    assert backend.unavailable_reason is not None and "404" in backend.unavailable_reason


def test_a_deferred_job_is_cut_at_the_invocation_deadline(
    unregistered: LambdaExtensionBackend, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAMBDA_DEADLINE_MARGIN_MS", "500")
    finished: list[bool] = []

    async def slow_job() -> None:
        await asyncio.sleep(30)
        finished.append(True)

    async def handler() -> None:
        with LambdaExtensionBackend.invocation("req-2", remaining_ms=600):  # 100 ms left before the margin
            await unregistered.defer(slow_job, label="tests.slow_job")

    asyncio.run(handler())
    assert finished == []
    [timed_out] = logs.named("lambda_extension.job_timed_out")
    assert timed_out["job"] == "tests.slow_job"


@pytest.mark.parametrize(
    ("entry_point", "tracked"),
    [
        ("tests.support.lambda_app.handler", True),
        ("tests.test_lambda_backend.decorated_handler", True),
        ("tests.support.lambda_plain.handler", False),
    ],
)
def test_only_an_entry_point_built_by_make_handler_gets_post_response_tasks(
    entry_point: str, tracked: bool, monkeypatch: pytest.MonkeyPatch, logs: LogCapture
) -> None:
    from tests.support.lambda_app import handler

    @functools.wraps(handler)
    def decorated_handler(event: Any, context: Any) -> Any:  # as Powertools' inject_lambda_context does
        return handler(event, context)

    monkeypatch.setattr(sys.modules[__name__], "decorated_handler", decorated_handler, raising=False)
    importlib.import_module(entry_point.rpartition(".")[0])
    monkeypatch.setenv("_HANDLER", entry_point)

    assert LambdaExtensionBackend(None)._tracks_invocations() is tracked
    assert bool(logs.named("lambda_extension.unavailable")) is not tracked


@pytest.mark.parametrize(
    "trace_header", [None, "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"]
)
def test_lambda_log_keys_are_those_powertools_logger_emits(
    monkeypatch: pytest.MonkeyPatch, trace_header: str | None
) -> None:
    from aws_lambda_powertools.logging.lambda_context import build_lambda_context_model
    from aws_lambda_powertools.shared.functions import get_tracer_id

    from shared.lambda_keys import lambda_log_keys

    if trace_header is None:
        monkeypatch.delenv("_X_AMZN_TRACE_ID", raising=False)
    else:
        monkeypatch.setenv("_X_AMZN_TRACE_ID", trace_header)
    context = SimpleNamespace(
        function_name="notifications",
        memory_limit_in_mb="512",
        invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:notifications",
        aws_request_id="6f0b5b0e-0000-4000-8000-000000000000",
    )

    keys = lambda_log_keys(context)  # type: ignore[arg-type]

    expected = dict(vars(build_lambda_context_model(context)))
    if get_tracer_id():
        expected["xray_trace_id"] = get_tracer_id()
    assert {k: v for k, v in keys.items() if k != "cold_start"} == expected
    assert isinstance(keys["cold_start"], bool)
