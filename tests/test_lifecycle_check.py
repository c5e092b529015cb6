"""The lifecycle checker (infra/lifecycle_check.py) on synthetic log lines: what it lets pass, what it reports."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infra.lifecycle_check import main, orphans
from infra.servers import ServerProcess
from tests.support import lifecycle
from tests.support.sam import ROOT

CLOCK = iter(range(10_000))


def line(event: str, task_id: str = "t1", **fields: Any) -> str:
    stamp = f"2026-01-01T00:00:{next(CLOCK) / 1000:09.6f}Z"
    return json.dumps({"event": event, "task_id": task_id, "task": "x", "timestamp": stamp, **fields})


def api(event: str, task_id: str = "t1", **fields: Any) -> str:
    return line(event, task_id, service="api", backend=fields.pop("backend", "inline"), request_id="r1", **fields)


def worker(event: str, task_id: str = "t1", **fields: Any) -> str:
    return line(event, task_id, service="worker", backend="sqs", queued_by="api", request_id="r1", **fields)


def test_a_task_that_ran_here_or_was_refused_or_lost_ends_once() -> None:
    logs = [
        api("task.queued", "a"),
        api("task.started", "a"),
        api("task.succeeded", "a"),
        api("task.queued", "b"),
        api("task.timed_out", "b"),
        api("task.queued", "c"),
        api("task.lost", "c", reason="shutdown"),
        "INFO:     Started server process [1]",
        "{not json",
    ]
    assert orphans([logs]) == []


def test_a_planted_orphan_is_reported_with_its_ids_and_events() -> None:
    logs = [
        api("task.queued", "ok"),
        api("task.succeeded", "ok"),
        api("task.queued", "gone"),
        api("task.started", "gone"),
    ]
    [orphan] = orphans([logs])
    assert orphan.startswith("task_id=gone task=x request_id=r1: accepted, never ended")
    assert "task.queued, task.started" in orphan


def test_two_ends_in_the_accepting_process_are_a_double_end() -> None:
    logs = [api("task.queued"), api("task.handoff_failed"), api("task.handed_off"), api("task.cancelled")]
    [orphan] = orphans([logs])
    assert "ended 2 times: task.handed_off, task.cancelled" in orphan


def test_without_a_worker_log_in_the_queue_is_an_end() -> None:
    assert orphans([[api("task.queued"), api("task.handed_off")]]) == []
    durable = [api("task.queued", backend="sqs"), api("task.enqueued", backend="sqs")]
    assert orphans([durable]) == []


def test_with_a_worker_log_a_queued_task_must_reach_a_final_end() -> None:
    api_log = [api("task.queued", "done"), api("task.handed_off", "done"), api("task.queued", "stuck")]
    api_log += [api("task.handed_off", "stuck")]
    worker_log = [worker("worker.started", ""), worker("task.started", "done"), worker("task.succeeded", "done")]
    assert [o.split(":")[0] for o in orphans([api_log, worker_log])] == ["task_id=stuck task=x request_id=r1"]
    assert "in the queue when the log ended" in orphans([api_log, worker_log])[0]
    # Forced either way, whatever the logs hold.
    assert len(orphans([api_log], follow_handoffs=True)) == 2
    assert orphans([api_log, worker_log], follow_handoffs=False) == []


def test_retries_then_the_dead_letter_queue_or_a_permanent_failure_are_final() -> None:
    retried = [api("task.queued", backend="sqs"), api("task.enqueued", backend="sqs")]
    retried += [worker("task.started"), worker("task.failed"), worker("task.started"), worker("task.succeeded")]
    dead = [api("task.queued", "d"), api("task.handed_off", "d")]
    dead += [worker("task.started", "d"), worker("task.timed_out", "d"), worker("task.dead_lettered", "d")]
    permanent = [api("task.queued", "p"), api("task.handed_off", "p")]
    permanent += [worker("task.started", "p"), worker("task.failed", "p", permanent=True)]
    assert orphans([retried, dead, permanent]) == []


def test_a_failed_attempt_without_a_retry_or_a_cut_attempt_is_reported() -> None:
    failed = [api("task.queued", "f"), api("task.handed_off", "f"), worker("task.started", "f")]
    failed += [worker("task.failed", "f")]
    cut = [api("task.queued", "c"), api("task.handed_off", "c"), worker("task.started", "c")]
    found = orphans([failed + cut])
    assert [o.split(":")[0] for o in found] == ["task_id=f task=x request_id=r1", "task_id=c task=x request_id=r1"]
    assert "in the queue" in found[0] and "its attempt never ended" in found[1]


def test_the_worker_may_log_before_the_handoff_line_is_written() -> None:
    """The message is taken before ``task.handed_off`` is written: the worker's lines come first."""
    logs = [api("task.queued"), worker("task.started"), worker("task.succeeded"), api("task.handed_off")]
    assert orphans([logs]) == []


def test_a_task_first_seen_on_the_worker_must_end_there() -> None:
    assert orphans([[worker("task.started", "w"), worker("task.duplicate", "w")]]) == []
    [orphan] = orphans([[worker("task.started", "w")]])
    assert orphan.startswith("task_id=w ")


def test_a_worker_run_seen_only_by_its_running_notice_is_reported_running() -> None:
    """At INFO the worker writes no task.started: its task.running says a run is under way."""
    logs = [api("task.queued", "r"), api("task.handed_off", "r"), worker("task.running", "r")]
    [orphan] = orphans([logs])
    assert "received by the worker, its attempt never ended" in orphan
    assert orphans([[*logs, worker("task.succeeded", "r")]]) == []


def test_a_queued_task_reported_lost_has_ended() -> None:
    logs = [api("task.queued"), api("task.handed_off"), worker("worker.started", "")]
    logs += [line("task.lost", backend="sqs", service="local_stack", reason="moto stopped with it in the queue")]
    assert orphans([logs]) == []


def test_logs_are_merged_by_timestamp() -> None:
    first, second = api("task.queued"), api("task.handed_off")
    third, fourth = worker("task.started"), worker("task.succeeded")
    assert orphans([[first, third], [second, fourth]]) == []


def test_the_command_line_reads_files_or_stdin_and_exits_1_on_an_orphan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean, orphaned = tmp_path / "clean.log", tmp_path / "orphaned.log"
    clean.write_text("\n".join([api("task.queued"), api("task.succeeded"), "plain text"]) + "\n")
    orphaned.write_text(api("task.queued", "lost-one") + "\n")
    assert main([str(clean)]) == 0
    assert main([str(clean), str(orphaned)]) == 1
    assert capsys.readouterr().out.startswith("task_id=lost-one ")
    assert main([], stdin=io.StringIO(orphaned.read_text())) == 1
    assert main([str(tmp_path / "missing.log")]) == 2
    assert "cannot read" in capsys.readouterr().err
    result = subprocess.run(
        [sys.executable, "-m", "infra.lifecycle_check"],
        input=orphaned.read_text(),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert (result.returncode, result.stdout.count("\n"), result.stderr) == (1, 1, "")


def test_the_suite_fails_a_test_whose_process_left_an_orphan(request: pytest.FixtureRequest) -> None:
    """What tests/support/lifecycle.py does at the end of every test that ran a real process."""
    planted = [api("task.queued", "planted"), api("task.started", "planted")]
    start = len(lifecycle._recorded)
    server = ServerProcess([sys.executable, "-c", f"print({chr(10).join(planted)!r})"], {}, port=0)
    server.process.wait(30)
    server.close()
    with pytest.raises(
        pytest.fail.Exception, match=r"(?s)1 task\(s\) without.*task_id=planted .*accepted, never ended"
    ):
        lifecycle._check(request.node, start)

    # The same, from a test that says it loses tasks by design, passes.
    request.node.add_marker(pytest.mark.tasks_may_be_lost("planted on purpose"))
    start = len(lifecycle._recorded)
    server = ServerProcess([sys.executable, "-c", f"print({chr(10).join(planted)!r})"], {}, port=0)
    server.process.wait(30)
    server.close()
    lifecycle._check(request.node, start)
