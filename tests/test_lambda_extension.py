"""Tasks on Lambda: the real runtime client (awslambdaric) against the Runtime API emulator.

Ordering is asserted on what the emulator observed at a given instant (its listeners
run synchronously when the runtime posts a response, when an invocation is handed out,
when the environment becomes free), never on wall-clock bounds.

Most tests share one warm execution environment, as invocations on Lambda do; each one
follows its own invocations by their ids and its own notification-log lines by label.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infra.lambda_events import http_api_event
from infra.runtime_api import (
    ExternalExtension,
    Invocation,
    LambdaEnvironment,
    RuntimeApiEmulator,
    RuntimeClientProcess,
    lambda_environment,
    load_event,
)

TEST_APP = "tests.support.lambda_app.handler"
NOTIFICATIONS = "functions.notifications.app.handler"


@dataclass
class Function:
    """A function's execution environment and the notification log its tasks write."""

    env: LambdaEnvironment
    log_file: Path

    def log_lines(self) -> list[str]:
        return self.log_file.read_text().splitlines() if self.log_file.exists() else []

    def task_lines(self, event: str, invocation: Invocation) -> list[dict[str, Any]]:
        return self.env.logs(event, function_request_id=invocation.request_id)


@dataclass
class Snapshot:
    log_lines: list[str]
    succeeded_ids: set[str]  # function_request_id of every task.succeeded line so far


class Moments:
    """The notification log and the finished tasks at chosen emulator moments."""

    def __init__(self, function: Function, *moments: str) -> None:
        self.function = function
        self.moments = moments
        self.taken: dict[tuple[str, str], Snapshot] = {}

    def __enter__(self) -> Moments:
        self._remove = self.function.env.api.add_listener(self._take)
        return self

    def __exit__(self, *_: object) -> None:
        self._remove()

    def _take(self, what: str, detail: str) -> None:
        if what in self.moments:
            succeeded = {line.get("function_request_id", "") for line in self.function.env.logs("task.succeeded")}
            self.taken[(what, detail)] = Snapshot(self.function.log_lines(), succeeded)

    def at(self, what: str, invocation: Invocation) -> Snapshot:
        return self.taken[(what, invocation.request_id)]


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Function]:
    """One execution environment of the test function, shared like a warm Lambda's."""
    log_file = tmp_path_factory.mktemp("lambda") / "notifications.log"
    with lambda_environment(TEST_APP, env={"NOTIFICATION_LOG_PATH": str(log_file)}) as env:
        yield Function(env, log_file)


def fresh(tmp_path: Path, handler: str = TEST_APP, env: dict[str, str] | None = None, **options: Any) -> Any:
    log_file = tmp_path / "notifications.log"
    return log_file, lambda_environment(handler, env={"NOTIFICATION_LOG_PATH": str(log_file), **(env or {})}, **options)


def test_response_is_posted_while_the_task_still_runs(warm: Function, tmp_path: Path) -> None:
    gate, label = tmp_path / "gate", unique("gated")
    invocation = warm.env.invoke(http_api_event(f"/gated/{label}", query={"gate": str(gate)}))

    assert invocation.result["statusCode"] == 200
    assert invocation.freed_at is None, "the extension must hold the environment while the task runs"
    assert not warm.task_lines("task.succeeded", invocation)

    gate.touch()
    invocation.wait_free()
    [done] = warm.task_lines("task.succeeded", invocation)
    assert done["task"] == "lambda_test.gated"
    assert done["backend"] == "lambda-extension"
    assert f"gated {label}" in warm.log_lines()


def test_warm_invocations_each_finish_their_tasks_before_the_next_is_handed_out(warm: Function) -> None:
    labels = [unique(f"slow{index}") for index in range(3)]
    with Moments(warm, "runtime.success", "invocation.handed_out", "environment.free") as moments:
        invocations = [warm.env.submit(http_api_event(f"/slow/{label}", query={"seconds": "0.5"})) for label in labels]
        for invocation in invocations:
            invocation.wait_free()

    for label, invocation in zip(labels, invocations, strict=True):
        assert invocation.result["statusCode"] == 200
        # The 0.5 s task had not finished when the runtime posted the response ...
        at_response = moments.at("runtime.success", invocation)
        assert f"slow {label}" not in at_response.log_lines
        assert invocation.request_id not in at_response.succeeded_ids
        # ... and had when the environment became free.
        assert f"slow {label}" in moments.at("environment.free", invocation).log_lines
        [done] = warm.task_lines("task.succeeded", invocation)
        assert done["backend"] == "lambda-extension"
        print(
            f"{label}: response after {invocation.time_to_response * 1000:.1f} ms, "
            f"environment free after {invocation.time_to_free * 1000:.1f} ms"
        )

    for previous, following in itertools.pairwise(invocations):
        assert previous.request_id in moments.at("invocation.handed_out", following).succeeded_ids
    order = [line for line in warm.log_lines() if line.split(" ")[-1] in labels]
    assert order == [f"slow {label}" for label in labels]


def test_the_extension_asks_for_every_event_on_one_kept_alive_connection(tmp_path: Path) -> None:
    # A new connection per event/next would sit between the response and the freeze, billed.
    _log_file, environment = fresh(tmp_path)
    with environment as env:
        for index in range(3):
            env.invoke(http_api_event(f"/slow/{unique(str(index))}", query={"seconds": "0"})).wait_free()
        ports = list(env.api.extension_next_ports)

    assert len(ports) == 4  # at init, then after each of the three invocations
    assert len(set(ports)) == 1, ports


def test_cold_start_is_true_only_on_the_first_invocation_of_an_environment(warm: Function) -> None:
    for _ in range(2):
        warm.env.invoke(http_api_event("/slow/cold", query={"seconds": "0"})).wait_free()

    first = warm.env.api.invocations[0]
    for invocation in warm.env.api.invocations:
        for line in warm.env.logs("request.completed", function_request_id=invocation.request_id):
            assert line["cold_start"] is (invocation is first)
    assert len(warm.env.logs("request.completed", cold_start=True)) <= 1


def test_a_failing_task_keeps_the_response_and_the_next_task_runs(warm: Function) -> None:
    label = unique("fail")
    failing = warm.env.invoke(http_api_event(f"/fail/{label}")).wait_free()
    following = warm.env.invoke(http_api_event(f"/slow/{label}", query={"seconds": "0"})).wait_free()

    assert failing.result["statusCode"] == 200
    assert failing.result["body"] == f'{{"queued":"{label}"}}'
    [failed] = warm.task_lines("task.failed", failing)
    assert failed["task"] == "lambda_test.fail"
    assert failed["error_type"] == "ValueError"
    assert failed["backend"] == "lambda-extension"
    [recorded] = warm.task_lines("task.succeeded", failing)
    assert recorded["task"] == "lambda_test.record"
    assert following.result["statusCode"] == 200
    assert [line for line in warm.log_lines() if label in line] == [f"record {label}", f"slow {label}"]


def test_task_lines_carry_the_lambda_and_request_keys(warm: Function) -> None:
    trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    gateway_id = unique("gw")
    from_gateway = warm.env.invoke(
        http_api_event("/slow/keys", query={"seconds": "0"}, request_id=gateway_id), trace_id=trace
    ).wait_free()
    from_client = warm.env.invoke(
        http_api_event("/slow/keys", query={"seconds": "0"}, headers={"X-Request-ID": "client-req-7"})
    ).wait_free()

    lines = warm.task_lines("task.queued", from_gateway) + warm.task_lines("task.succeeded", from_gateway)
    assert len(lines) == 2
    for line in lines:
        assert line["function_name"] == warm.env.api.function_name
        assert line["function_arn"] == warm.env.api.function_arn
        assert line["function_memory_size"] == "512"
        assert line["xray_trace_id"] == "1-5759e988-bd862e3fe1be46a994272793"
        assert line["request_id"] == gateway_id
        assert line["service"] == "lambda-test"
        assert isinstance(line["cold_start"], bool)
    [client_line] = warm.task_lines("task.succeeded", from_client)
    assert client_line["request_id"] == "client-req-7"
    assert from_client.result["headers"]["x-request-id"] == "client-req-7"
    assert from_gateway.result["headers"]["x-request-id"] == gateway_id


def test_a_sync_task_past_the_deadline_ends_the_process_and_never_runs_on(tmp_path: Path) -> None:
    """Deadline 2 s, margin 500 ms: the 3 s sync task still runs at 1.5 s. A thread cannot be stopped,
    so the process ends (exit 3) rather than let it run on, frozen, into a later invocation; the next
    task never starts."""
    label = unique("blocking")
    log_file, environment = fresh(tmp_path)
    with environment as env:
        function = Function(env, log_file)
        invocation = env.invoke(http_api_event(f"/blocking/{label}", query={"seconds": "3"}), timeout_s=2.0)
        returncode = env.process.wait(20)
        time.sleep(max(0.0, invocation.handed_out_at + 4.0 - time.monotonic()))  # past the task's own end
        lines = function.log_lines()

        assert invocation.result["statusCode"] == 200
        assert returncode == 3
        assert invocation.freed_at is None, "never released with the thread still running"
        timed_out = {line["task"]: line for line in function.task_lines("task.timed_out", invocation)}
        assert timed_out["lambda_test.blocking"]["started"] is True
        assert timed_out["lambda_test.blocking"]["still_running"] is True
        assert timed_out["lambda_test.record"]["started"] is False
        assert not function.task_lines("task.succeeded", invocation)
        [exiting] = env.logs("lambda_extension.exiting")
        assert exiting["exit_code"] == 3 and "lambda_test.blocking" in exiting["reason"]
        assert f"blocking {label}" not in lines, "its side effect never happens, in this invocation or a later one"


def test_the_last_sync_task_runs_on_the_runner_thread_the_others_in_the_thread_pool(warm: Function) -> None:
    """Nothing waits behind the last task: the pool's two hand-overs would only delay the release.
    It still sees what a pool worker sees: no running event loop (its own ``asyncio.run`` works) and
    a context of its own (a key it binds is not on the runner's task.succeeded line)."""
    label = unique("records")
    invocation = warm.env.invoke(http_api_event(f"/records/{label}")).wait_free()

    assert invocation.result["statusCode"] == 200
    threads = {line["label"]: line["thread"] for line in warm.task_lines("lambda_test.recorded", invocation)}
    assert threads[f"{label}-last"] == "lambda-extension-runner"
    assert threads[f"{label}-first"] != "lambda-extension-runner"
    succeeded = {line["task"]: line for line in warm.task_lines("task.succeeded", invocation)}
    assert set(succeeded) == {"lambda_test.record", "lambda_test.record_in_own_loop"}
    assert "bound_by_task" not in succeeded["lambda_test.record_in_own_loop"]
    assert f"own loop {label}-last" in warm.log_lines()


@pytest.mark.parametrize("warmed", [False, True], ids=["first-invocation", "warm"])
def test_the_last_sync_task_past_the_deadline_ends_the_process(tmp_path: Path, warmed: bool) -> None:
    """Called on the runner thread, nothing there can stop it at the deadline: the extension thread
    logs it timed out and ends the process, as for a task in a thread of its own. First invocation:
    the deadline comes before the extension thread's next look (it is woken); warm: after it.

    Margin 1.5 s: the process must end itself at the deadline less the margin, well before the
    invocation's end, where Lambda would kill it; the test kills it halfway through the margin."""
    label = unique("blocking-last")
    margin_s = 1.5
    log_file, environment = fresh(tmp_path, env={"LAMBDA_DEADLINE_MARGIN_MS": str(int(margin_s * 1000))})
    with environment as env:
        function = Function(env, log_file)
        if warmed:
            env.invoke(http_api_event(f"/slow/{label}", query={"seconds": "0"})).wait_free()
        query = {"seconds": "5", "then_record": "false"}
        invocation = env.invoke(http_api_event(f"/blocking/{label}", query=query), timeout_s=3.0 if warmed else 2.0)
        too_late = invocation.deadline_ms / 1000 - margin_s / 2 - time.time()
        lambda_timeout = threading.Timer(too_late, env.process.process.kill)
        lambda_timeout.start()
        try:
            returncode = env.process.wait(20)
        finally:
            lambda_timeout.cancel()

        assert invocation.result["statusCode"] == 200
        assert returncode == 3, "ended by its own watch at the deadline less the margin, not killed later"
        assert invocation.freed_at is None
        [timed_out] = function.task_lines("task.timed_out", invocation)
        assert timed_out["task"] == "lambda_test.blocking"
        assert timed_out["started"] is True and timed_out["still_running"] is True
        assert timed_out["request_id"] and timed_out["function_request_id"] == invocation.request_id
        assert not function.task_lines("task.succeeded", invocation)
        [exiting] = env.logs("lambda_extension.exiting")
        assert exiting["exit_code"] == 3 and "lambda_test.blocking" in exiting["reason"]
        assert f"blocking {label}" not in function.log_lines()


def test_a_sync_task_past_its_timeout_holds_the_environment_until_it_ends(warm: Function) -> None:
    """Its own timeout (0.5 s) passes well before the deadline: reported overrunning, the next task
    runs meanwhile, the environment is released only once the thread ended and said how."""
    label = unique("overrunning")
    with Moments(warm, "environment.free") as moments:
        invocation = warm.env.invoke(http_api_event(f"/overrunning/{label}", query={"seconds": "1"}))
        invocation.wait_free()

    assert invocation.result["statusCode"] == 200
    [overrunning] = warm.task_lines("task.overrunning", invocation)
    assert overrunning["task"] == "lambda_test.overrunning" and overrunning["timeout_s"] == 0.5
    succeeded = {line["task"]: line for line in warm.task_lines("task.succeeded", invocation)}
    assert succeeded["lambda_test.overrunning"]["overran"] is True
    assert "overran" not in succeeded["lambda_test.record"]
    assert not warm.task_lines("task.timed_out", invocation)
    at_free = moments.at("environment.free", invocation).log_lines
    assert at_free.index(f"record {label}") < at_free.index(f"overrunning {label}")


def test_deferred_job_runs_after_the_response_in_the_request_context(warm: Function) -> None:
    label, gateway_id = unique("deferred"), unique("gw")
    with Moments(warm, "runtime.success", "environment.free") as moments:
        invocation = warm.env.invoke(http_api_event(f"/defer/{label}", request_id=gateway_id)).wait_free()

    assert invocation.result["statusCode"] == 200
    assert f"deferred {label}" not in moments.at("runtime.success", invocation).log_lines
    assert f"deferred {label}" in moments.at("environment.free", invocation).log_lines
    [ran] = warm.env.logs("lambda_test.deferred_ran", label=label)
    assert ran["request_id"] == gateway_id
    assert ran["function_request_id"] == invocation.request_id


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"detail-type": "Scheduled Event", "source": "aws.events"}, "no known event shape"),
        ([1, 2, 3], "the event is a JSON list"),
        ({"version": "2.0", "rawPath": "/", "requestContext": {"http": {}}}, "malformed HTTPGateway event"),
    ],
    ids=["eventbridge", "list", "truncated-http-api"],
)
def test_an_unsupported_event_is_a_clear_error_and_the_environment_serves_on(
    warm: Function, event: Any, message: str
) -> None:
    pid = warm.env.process.pid
    label = unique("after")
    with Moments(warm, "runtime.success") as moments:
        bad = warm.env.invoke(event).wait_free()
        good = warm.env.invoke(http_api_event(f"/slow/{label}", query={"seconds": "0.5"})).wait_free()

    assert bad.status == "error"
    assert bad.error_type == "InvalidEventError"
    assert message in bad.error["errorMessage"]
    assert "API Gateway" in bad.error["errorMessage"]
    [logged] = warm.env.logs("lambda.invalid_event", function_request_id=bad.request_id)
    assert logged["level"] == "error"

    assert good.result["statusCode"] == 200
    assert f"slow {label}" not in moments.at("runtime.success", good).log_lines
    assert f"slow {label}" in warm.log_lines()
    assert warm.env.process.alive() and warm.env.process.pid == pid


def test_a_payload_that_is_not_json_releases_the_environment(warm: Function) -> None:
    """awslambdaric fails before calling the handler; the extension lets go after a short grace."""
    label = unique("ok")
    bad = warm.env.invoke(b"{not json").wait_free()
    good = warm.env.invoke(http_api_event(f"/slow/{label}", query={"seconds": "0"})).wait_free()

    assert bad.error_type == "Runtime.UnmarshalError"
    assert warm.env.logs("lambda_extension.handler_not_started", function_request_id=bad.request_id)
    assert good.result["statusCode"] == 200
    assert f"slow {label}" in warm.log_lines()


def test_shutdown_right_after_a_response_loses_no_task(tmp_path: Path) -> None:
    log_file = tmp_path / "notifications.log"
    with RuntimeApiEmulator() as api:
        monitor = ExternalExtension(api, "shutdown-monitor")  # receives SHUTDOWN, as internal ones cannot
        process = RuntimeClientProcess(api, TEST_APP, env={"NOTIFICATION_LOG_PATH": str(log_file)})
        try:
            api.wait_ready(60, alive=process.alive)
            function = Function(LambdaEnvironment(api, process), log_file)
            with Moments(function, "shutdown.sent") as moments:
                invocation = function.env.invoke(http_api_event("/slow/last", query={"seconds": "0.5"}))
                returncode = function.env.shutdown()  # requested while the task runs
                monitor.join()  # the SHUTDOWN it was sent is recorded by its own thread

            assert moments.taken[("shutdown.sent", "spindown")].log_lines == ["slow last"]
            assert [event["eventType"] for event in monitor.events] == ["SHUTDOWN"]
            [done] = function.task_lines("task.succeeded", invocation)
            assert done["backend"] == "lambda-extension"
            assert not function.env.logs("task.cancelled") and not function.env.logs("task.timed_out")
            assert returncode == -15  # killed by SIGTERM once nothing was left to do
            moments_seen = ("runtime.success", "environment.free", "shutdown.sent", "runtime.sigterm")
            assert [what for _, what, _ in api.timeline if what in moments_seen] == list(moments_seen)
        finally:
            process.close()


@pytest.mark.parametrize(
    ("handler", "options", "backend", "extensions", "warning"),
    [
        (TEST_APP, {"env": {"TASK_BACKEND": "inline"}}, "inline", 0, None),
        (TEST_APP, {"extensions_api": False}, "lambda-before-response", 0, "lambda_extension.unavailable"),
        ("tests.support.lambda_plain.handler", {}, "lambda-before-response", 1, "lambda_extension.unavailable"),
    ],
    ids=["forced-inline", "no-extensions-api", "plain-mangum-entry-point"],
)
def test_without_post_response_execution_tasks_finish_before_the_response(
    tmp_path: Path, handler: str, options: dict[str, Any], backend: str, extensions: int, warning: str | None
) -> None:
    log_file, environment = fresh(tmp_path, handler, **options)
    with environment as env:
        function = Function(env, log_file)
        with Moments(function, "runtime.success") as moments:
            invocations = [
                env.invoke(http_api_event(f"/slow/inline{index}", query={"seconds": "0.2"}, request_id=f"gw-{index}"))
                for index in range(2)
            ]
            for invocation in invocations:
                invocation.wait_free()

        for index, invocation in enumerate(invocations):
            assert invocation.result["statusCode"] == 200
            assert moments.at("runtime.success", invocation).log_lines[-1] == f"slow inline{index}"
            [done] = env.logs("task.succeeded", request_id=f"gw-{index}")  # plain Mangum binds no Lambda keys
            assert done["backend"] == backend
            [queued] = env.logs("task.queued", request_id=f"gw-{index}")
            assert queued["backend"] == backend
        assert len(env.api.extensions) == extensions
        assert not env.logs("lambda_extension.handler_not_started")  # nothing waits for a handler that never reports
        if warning:
            assert len(env.logs(warning)) == 1


EVENT_SHAPES = {
    "apigw-v1": "notifications-send-notification-apigw-v1.json",
    "http-api": "notifications-send-notification-http-api.json",
    "function-url": "notifications-send-notification-function-url.json",
    "alb": "notifications-send-notification-alb.json",
}


def test_every_event_shape_reaches_the_notifications_function(tmp_path: Path) -> None:
    log_file, environment = fresh(tmp_path, NOTIFICATIONS, function_name="notifications")
    with environment as env:
        function = Function(env, log_file)
        with Moments(function, "environment.free") as moments:
            invocations = {shape: env.invoke(load_event(name)).wait_free() for shape, name in EVENT_SHAPES.items()}

        for shape, invocation in invocations.items():
            event = load_event(EVENT_SHAPES[shape])
            result = invocation.result
            assert result["statusCode"] == 200, shape
            assert result["body"] == '{"message":"Notification sent in the background"}', shape
            headers = result.get("headers") or {k: v[0] for k, v in result.get("multiValueHeaders", {}).items()}
            [done] = function.task_lines("task.succeeded", invocation)
            assert done["task"] == "notifications.write_notification", shape
            assert done["backend"] == "lambda-extension", shape
            assert headers["x-request-id"] == done["request_id"], shape
            gateway_id = event["requestContext"].get("requestId")
            if gateway_id:  # API Gateway and Function URLs carry one; an ALB does not
                assert done["request_id"] == gateway_id, shape
            assert invocation.request_id in moments.at("environment.free", invocation).succeeded_ids, shape

        assert function.log_lines() == ["notification for foo@example.com: some notification"] * 4
