"""bench section 2 times a round until its last task ran: the tasks a server left queued are not free."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from bench.container import _lines_in, _wait_for_tasks


def test_the_round_waits_until_the_task_log_holds_a_line_per_request(tmp_path: Path) -> None:
    log = tmp_path / "notifications.log"
    assert _lines_in(log) == 0  # no task ran yet: no file
    log.write_text("an earlier round's line\n")
    since = log.stat().st_size
    with log.open("a") as written:
        written.write("notification 1\n")

    def late_tasks() -> None:
        for number in (2, 3):
            time.sleep(0.05)
            with log.open("a") as written:
                written.write(f"notification {number}\n")

    writer = threading.Thread(target=late_tasks)
    writer.start()
    waited = _wait_for_tasks(log, since, expected=3)
    writer.join()
    assert _lines_in(log, since) == 3
    assert _lines_in(log) == 4
    assert waited >= 0.09  # the two late lines, 50 ms apart, were waited for


def test_tasks_that_never_run_fail_the_round_in_one_line(tmp_path: Path) -> None:
    log = tmp_path / "notifications.log"
    log.write_text("notification 1\n")
    with pytest.raises(RuntimeError, match=r"1 task lines after 0.1 s, expected 2"):
        _wait_for_tasks(log, 0, expected=2, timeout_s=0.1)
