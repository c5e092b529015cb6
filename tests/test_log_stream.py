"""The log stream: lines a server's event loop prints are written together, in order, none lost."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from shared.log_stream import WRITE_DELAY_S, LineBatcher
from shared.logs import batch_lines, configure_logging, flush_logs, get_logger

ROOT = Path(__file__).resolve().parents[1]


class Recording:
    """A stream that keeps each ``write`` call apart: what a pipe or a file would get, one system call each."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return False


def test_without_a_loop_each_line_is_written_at_once() -> None:
    recording = Recording()
    batcher = LineBatcher(recording)  # type: ignore[arg-type]
    batcher.write("one\n")
    batcher.flush()
    batcher.write("two\n")
    assert recording.writes == ["one\n", "two\n"]


def test_a_bound_loop_writes_its_lines_together_a_moment_later() -> None:
    recording = Recording()
    batcher = LineBatcher(recording)  # type: ignore[arg-type]

    async def main() -> tuple[list[str], list[str]]:
        batcher.bind(asyncio.get_running_loop())
        for line in ("a\n", "b\n", "c\n"):
            batcher.write(line)
            batcher.flush()  # what a logger calls after each line: no write yet
        before = list(recording.writes)
        await asyncio.sleep(WRITE_DELAY_S * 4)  # a later timer than the write's: it has run
        return before, list(recording.writes)

    before, after = asyncio.run(main())
    batcher.unbind()
    assert before == []
    assert after == ["a\nb\nc\n"]


def test_a_line_from_another_thread_is_written_at_once_after_the_pending_ones() -> None:
    recording = Recording()
    batcher = LineBatcher(recording)  # type: ignore[arg-type]

    async def main() -> None:
        batcher.bind(asyncio.get_running_loop())
        batcher.write("from the loop\n")
        worker = threading.Thread(target=batcher.write, args=("from a thread\n",))
        worker.start()
        worker.join()

    asyncio.run(main())
    assert recording.writes == ["from the loop\n", "from a thread\n"]
    batcher.unbind()


def _stop_a_loop_with_a_line_pending(batcher: LineBatcher) -> None:
    loop = asyncio.new_event_loop()

    def last_words() -> None:
        batcher.bind(loop)
        batcher.write("last line of the loop\n")  # to be written by a timer that never fires
        loop.stop()

    loop.call_soon(last_words)
    loop.run_forever()
    loop.close()


def test_a_line_pending_when_the_loop_stops_is_written_before_the_next_line() -> None:
    recording = Recording()
    batcher = LineBatcher(recording)  # type: ignore[arg-type]
    _stop_a_loop_with_a_line_pending(batcher)
    assert recording.writes == []
    batcher.write("printed after the loop\n")  # no running loop: written at once, after the pending line
    assert recording.writes == ["last line of the loop\n", "printed after the loop\n"]
    batcher.unbind()


def test_unbind_writes_the_pending_lines_and_every_later_line_at_once() -> None:
    recording = Recording()
    batcher = LineBatcher(recording)  # type: ignore[arg-type]
    _stop_a_loop_with_a_line_pending(batcher)
    batcher.unbind()
    assert recording.writes == ["last line of the loop\n"]
    batcher.write("unbound\n")
    assert recording.writes == ["last line of the loop\n", "unbound\n"]


def test_the_pipeline_writes_a_requests_lines_in_one_write_in_a_server_loop() -> None:
    recording = Recording()
    configure_logging("tests", stream=recording, cache_loggers=False)  # type: ignore[arg-type]
    log = get_logger("tests.log_stream")

    async def request() -> None:
        batch_lines(asyncio.get_running_loop())
        log.info("task.queued", task="t")
        log.info("request.completed", status=200)
        await asyncio.sleep(WRITE_DELAY_S * 4)

    try:
        asyncio.run(request())
    finally:
        flush_logs()
        configure_logging("tests", cache_loggers=False)
    assert len(recording.writes) == 1
    events = [json.loads(line)["event"] for line in recording.writes[0].splitlines()]
    assert events == ["task.queued", "request.completed"]


def test_a_line_pending_in_the_loop_survives_exit_process() -> None:
    """``lifecycle.exit_process`` ends the process with ``os._exit``: it writes the pending lines first."""
    script = """
import asyncio
from shared.background import lifecycle
from shared.logs import batch_lines, configure_logging, get_logger

configure_logging("tests")

async def main():
    batch_lines(asyncio.get_running_loop())
    get_logger("tests").info("pending.line")
    lifecycle.exit_process(3, "the test ends it")

asyncio.run(main())
"""
    env = {**os.environ, "LOG_FORMAT": "json", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    events = [json.loads(line)["event"] for line in done.stdout.splitlines() if line.startswith("{")]
    assert "pending.line" in events, done.stdout


class Broken(Recording):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_broken_stream_loses_the_batch_with_one_line_on_stderr_not_an_error_loop(
    capsys: pytest.CaptureFixture[str],
) -> None:
    batcher = LineBatcher(Broken())  # type: ignore[arg-type]
    errors: list[dict[str, object]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: errors.append(context))
        batcher.bind(loop)
        batcher.write("cannot be written\n")
        await asyncio.sleep(WRITE_DELAY_S * 4)

    asyncio.run(main())
    batcher._loop = None  # unbound without the final write, which would raise to its caller as any write does
    assert errors == []  # asyncio's handler would log the error through the same broken stream
    assert "log lines lost: the log stream failed (BrokenPipeError" in capsys.readouterr().err
