"""Tracked tasks: a client follows each one to its end at ``GET /<function>/tasks/{task_id}``.

In-process runs against moto in the test process (the template's TaskStatusTable); the worker's
steps (retrying, dead-lettered) with the worker in the test process; the handoff at shutdown and
the polling right after the response against a real uvicorn process and moto's server.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks
from fastapi.testclient import TestClient

from bench import handoff_tasks
from infra.durable_resources import create_status_table
from infra.lambda_events import http_api_event
from infra.runtime_api import lambda_environment
from infra.servers import ServerProcess, eventually, parse_json_lines, start_function
from shared import aws
from shared.app import create_app
from shared.background import lifecycle, status_store
from shared.settings import ConfigurationError, get_settings, load_settings
from shared.worker import Worker
from tests.support import status_app
from tests.support.aws_resources import AwsState
from tests.support.logs import LogCapture
from tests.support.sqs_queues import (
    DurableAws,
    FakeLambdaContext,
    durable_aws,
    durable_aws_server,
    executor_from_settings,
    subprocess_env,
)

LINK = re.compile(r'<([^>]+)>; rel="monitor"')
EMAIL = "jane.doe@example.com"

untracked_app = create_app("untracked", track_tasks=False)


@untracked_app.post("/run")
async def run_echo(background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(status_app.echo, status_app.SECRET, EMAIL)
    return {}


def links(response: httpx.Response) -> list[str]:
    return [LINK.fullmatch(value.strip()).group(1) for value in response.headers.get_list("link")]  # type: ignore[union-attr]


def raw_item(task_id: str) -> dict[str, Any] | None:
    table = get_settings().task_status_table
    item: dict[str, Any] | None = (
        aws.client("dynamodb").get_item(TableName=table, Key={"task_id": {"S": task_id}}).get("Item")
    )
    return item


def settled(client: TestClient, url: str) -> dict[str, Any]:
    """The record once ``done``: in a container, steps after the response are written by a thread of their own."""
    return eventually(lambda: (body := client.get(url).json()).get("done") and body, what=f"the end of {url}")


class DynamoCalls:
    """Every DynamoDB call this process makes, by operation name (botocore's event hook)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        aws.client("dynamodb").meta.events.register("before-call.dynamodb", self._seen)

    def _seen(self, model: Any, **_: Any) -> None:
        self.names.append(model.name)


@pytest.fixture
def client(state: AwsState) -> Iterator[TestClient]:
    with TestClient(status_app.app) as test_client:
        yield test_client


# --- in-process ---------------------------------------------------------------------------------


def test_a_tracked_task_is_followed_to_succeeded_with_its_masked_result_and_none_of_its_arguments(
    client: TestClient,
) -> None:
    response = client.post("/run", params={"kinds": "echo"}, headers={"X-Request-ID": "req-follow"})

    assert response.status_code == 200
    [url] = links(response)
    assert re.fullmatch(r"http://testserver/tasks/[0-9a-f]{32}", url)
    assert client.get(url).status_code == 200
    body = settled(client, url)
    assert body["state"] == "succeeded" and body["done"] is True
    assert body["task"] == "tests.status.echo"
    assert body["attempt"] == 1 and body["backend"] == "inline"
    assert body["request_id"] == "req-follow"
    assert body["queued_at"] <= body["started_at"] <= body["ended_at"]
    assert body["result"] == {"email": "j***@example.com", "length": len(status_app.SECRET)}
    assert body["error"] is None
    stored = json.dumps(raw_item(url.rsplit("/", 1)[1]))
    assert status_app.SECRET not in stored and EMAIL not in stored


def test_a_tracked_task_that_raises_is_followed_to_failed_with_its_masked_error(client: TestClient) -> None:
    response = client.post("/run", params={"kinds": "explode"})

    [url] = links(response)
    body = settled(client, url)
    assert body["state"] == "failed" and body["done"] is True
    assert body["error"] == {"type": "ValueError", "message": "cannot reach j***@example.com"}
    assert status_app.SECRET not in json.dumps(raw_item(url.rsplit("/", 1)[1]))


def test_only_tracked_tasks_get_a_link_and_an_untracked_request_calls_no_store(client: TestClient) -> None:
    calls = DynamoCalls()
    response = client.post("/run", params={"kinds": "registered,plain"})
    assert response.status_code == 200
    assert "link" not in response.headers
    assert calls.names == []

    response = client.post("/run", params={"kinds": "plain,echo,registered"})
    [url] = links(response)
    assert client.get(url).json()["task"] == "tests.status.echo"


def test_track_tasks_tracks_every_registered_task_but_not_plain_functions(
    state: AwsState, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACK_TASKS", "true")
    get_settings.cache_clear()
    with executor_from_settings(status_app.app), TestClient(status_app.app) as client:
        response = client.post("/run", params={"kinds": "registered,plain"})
        [url] = links(response)
        body = settled(client, url)
    assert body["task"] == "tests.status.registered" and body["state"] == "succeeded"
    assert body["result"] == "registered but not declared tracked"


def test_the_queued_records_of_a_request_are_one_batch_written_before_its_response_starts(state: AwsState) -> None:
    """The response's first message is intercepted: by then both records exist, in one BatchWriteItem."""
    calls = DynamoCalls()
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def intercept(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and "calls" not in seen:
                seen["calls"] = list(calls.names)
                headers = httpx.Headers([(k.decode(), v.decode()) for k, v in message["headers"]])
                ids = [LINK.fullmatch(v.strip()).group(1).rsplit("/", 1)[1] for v in headers.get_list("link")]  # type: ignore[union-attr]
                seen["states"] = [(raw_item(task_id) or {}).get("state", {}).get("S") for task_id in ids]
            await send(message)

        await status_app.app(scope, receive, intercept)

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            return await http.post("/run", params={"kinds": "echo,plain,explode"})

    response = asyncio.run(post())
    assert response.status_code == 200
    assert seen["calls"] == ["BatchWriteItem"]
    assert seen["states"] == ["queued", "queued"]


def test_an_unknown_id_is_a_404_and_a_malformed_one_a_422_both_json(client: TestClient) -> None:
    unknown = client.get(f"/tasks/{'0' * 32}")
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": f"Task {'0' * 32} not found."}
    malformed = client.get("/tasks/not-an-id")
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["loc"] == ["path", "task_id"]


def test_a_result_too_large_or_not_json_is_refused_and_the_task_still_succeeds(client: TestClient) -> None:
    response = client.post("/run", params={"kinds": "big,odd"})
    big, odd = (settled(client, url) for url in links(response))
    assert big["state"] == odd["state"] == "succeeded"
    assert big["result"] is None and big["result_refused"].startswith(
        "10002 bytes of JSON, over TASK_STATUS_RESULT_MAX_BYTES"
    )
    assert odd["result"] is None and odd["result_refused"].startswith("not JSON-serialisable")


def test_track_puts_the_status_url_of_a_task_in_the_body(client: TestClient) -> None:
    response = client.post("/tracked")
    url = response.json()["task_url"]
    assert links(response) == [url]
    assert settled(client, url)["state"] == "succeeded"


def test_a_status_write_that_fails_is_logged_and_counted_and_fails_neither_response_nor_task(
    state: AwsState, logs: LogCapture
) -> None:
    aws.client("dynamodb").delete_table(TableName=state.settings.task_status_table)
    with TestClient(status_app.app) as client:
        response = client.post("/run", params={"kinds": "echo"})
    assert response.status_code == 200
    failed = eventually(lambda: len(found := logs.named("task.status_write_failed")) == 3 and found)
    assert [event["state"] for event in failed] == ["queued", "running", "succeeded"]
    assert logs.named("task.succeeded", task="tests.status.echo")


def test_a_wrong_track_tasks_value_stops_the_start_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACK_TASKS", "sometimes")
    with pytest.raises(ConfigurationError, match=r"^TRACK_TASKS='sometimes': Input should be a valid boolean"):
        load_settings()


# --- the worker ---------------------------------------------------------------------------------


def test_a_durable_tracked_task_that_keeps_failing_is_followed_through_its_retries_to_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with durable_aws(
        monkeypatch,
        max_receives=3,
        visibility_timeout=0,
        DURABLE_TASKS="tests.status.explode",
        TASK_MODULES="tests.support.status_app",
    ) as durable:
        create_status_table(get_settings().task_status_table)
        with executor_from_settings(status_app.app), TestClient(status_app.app) as client:
            [url] = links(client.post("/run", params={"kinds": "explode"}))
            eventually(lambda: client.get(url).json()["state"] == "enqueued")
            worker = Worker()
            states = []
            try:
                while messages := durable.receive():
                    worker.handle(durable.event(messages), FakeLambdaContext())
                    states.append({key: client.get(url).json()[key] for key in ("state", "attempt", "backend")})
            finally:
                worker.close()
            final = client.get(url).json()
    assert states == [
        {"state": "retrying", "attempt": 1, "backend": "sqs"},
        {"state": "retrying", "attempt": 2, "backend": "sqs"},
        {"state": "dead_lettered", "attempt": 3, "backend": "sqs"},
    ]
    assert final["done"] is True
    assert final["error"] == {"type": "ValueError", "message": "cannot reach j***@example.com"}


# --- real processes -----------------------------------------------------------------------------


@pytest.fixture
def durable_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[DurableAws]:
    with durable_aws_server(monkeypatch, TASK_MODULES="bench.handoff_tasks") as resources:
        create_status_table(get_settings().task_status_table)
        yield resources


def start_tracking_server(durable: DurableAws, **env: str) -> ServerProcess:
    """bench's handoff function, with TRACK_TASKS: every registered task it queues is tracked."""
    return start_function(
        "handoff", subprocess_env(durable, TRACK_TASKS="true", **env), "--app", "bench.handoff_app:app"
    )


def test_polling_right_after_the_response_never_gets_a_404(durable_server: DurableAws, tmp_path: Path) -> None:
    server = start_tracking_server(durable_server)
    try:
        with httpx.Client(timeout=10) as http:
            for round_ in range(10):
                response = http.post(
                    f"{server.base_url}/tasks/work",
                    params={"path": str(tmp_path / "done.txt"), "label": f"r{round_}", "count": 3, "seconds": 0},
                )
                urls = links(response)
                assert len(urls) == 3
                answers = [http.get(url) for url in urls]
                assert [answer.status_code for answer in answers] == [200, 200, 200]
                assert {answer.json()["state"] for answer in answers} <= {"queued", "running", "succeeded"}
            last = eventually(lambda: (body := http.get(urls[-1]).json())["done"] and body)
            assert last["state"] == "succeeded"
    finally:
        server.close()


def test_a_tracked_task_handed_off_at_shutdown_is_followed_to_its_end_on_the_worker(
    durable_server: DurableAws, tmp_path: Path
) -> None:
    done = tmp_path / "done.txt"
    server = start_tracking_server(durable_server, SHUTDOWN_GRACE_SECONDS="1")
    response = httpx.post(
        f"{server.base_url}/tasks/slow",
        params={"path": str(done), "label": "s", "count": 1, "seconds": 3},
        timeout=10,
    )
    [url] = links(response)
    path = httpx.URL(url).path
    assert httpx.get(url, timeout=10).json()["state"] in ("queued", "running")
    eventually(lambda: done.exists() and "started s-0" in done.read_text(), what="the task's start")
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(40) == 0
    events = parse_json_lines(server.output())
    server.close()
    assert [e["event"] for e in events if e.get("event") == "task.handed_off"] == ["task.handed_off"]

    # The API process is gone: read the record as its route would, from another app of the same store.
    with TestClient(status_app.app) as client:
        record = client.get(path).json()
        assert record["state"] == "handed_off" and record["done"] is False
        worker = Worker()
        try:
            assert worker.handle(durable_server.event(durable_server.receive_all()), FakeLambdaContext()) == {
                "batchItemFailures": []
            }
        finally:
            worker.close()
        record = client.get(path).json()
    assert record["state"] == "succeeded" and record["done"] is True
    assert record["backend"] == "sqs" and record["attempt"] == 1
    assert record["task"] == "tests.handoff.slow"
    assert handoff_tasks.completions(done) == {"s-0": 1}, "the worker ran it to its end"


def test_on_lambda_a_tracked_task_is_followed_to_its_end_after_the_response(durable_server: DurableAws) -> None:
    """The real runtime client: the queued record is written before the response, the rest by the extension."""
    assert durable_server.endpoint_url is not None
    env = {"AWS_ENDPOINT_URL": durable_server.endpoint_url, "LOG_FORMAT": "json"}
    with lambda_environment("tests.support.status_app.handler", env=env) as function:
        invocation = function.invoke(http_api_event("/run", query={"kinds": "echo"}))
        assert invocation.result["statusCode"] == 200
        [url] = links(httpx.Response(200, headers=invocation.result["headers"]))
        invocation.wait_free()
        with TestClient(status_app.app) as client:
            record = client.get(httpx.URL(url).path).json()
    assert record["state"] == "succeeded" and record["backend"] == "lambda-extension"
    assert record["invocation"] == invocation.request_id
    assert record["result"] == {"email": "j***@example.com", "length": len(status_app.SECRET)}


def test_a_tracked_task_queued_where_no_status_is_recorded_is_warned_once_with_what_to_do(
    state: AwsState, logs: LogCapture
) -> None:
    lifecycle.observe(None)  # as in a function created without track_tasks and without TRACK_TASKS
    try:
        with TestClient(untracked_app) as client:
            for _ in range(2):
                assert client.post("/run").status_code == 200
    finally:
        status_store.install(get_settings())
    [warning] = logs.named("tracking.not_recorded")
    assert warning["task"] == "tests.status.echo" and warning["level"] == "warning"
    assert "create_app(..., track_tasks=True) or set TRACK_TASKS=true" in warning["error"]
    assert len(logs.named("task.succeeded", task="tests.status.echo")) == 2
