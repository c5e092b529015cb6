"""The suite checks every real process's log: each task it accepted ends exactly once.

A pytest plugin (registered in tests/conftest.py). The process helpers (``ServerProcess``:
uvicorn servers, the worker, moto; ``RuntimeClientProcess``: the Lambda runtime client against
the emulator; ``make run`` in test_local_stack.py) hand their output to ``record`` when they are
closed. At the end of each test (and of each module, for processes a module shares) the logs
recorded meanwhile are merged and given to ``infra.lifecycle_check``; an orphan or a double end
fails the test, listed one per line.

Opt-out, for a test that loses tasks by design (``kill -9``, a worker stopped mid-task)::

    @pytest.mark.tasks_may_be_lost("kill -9: the task dies with the process")

A module-scoped process is checked when its module ends: mark the module (``pytestmark``).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from infra.lifecycle_check import orphans
from infra.runtime_api import RuntimeClientProcess
from infra.servers import ServerProcess

MARK = "tasks_may_be_lost"

_recorded: list[tuple[str, str]] = []
_listening = 0


def record(process: str, output: str) -> None:
    """One closed process's output (kept only while a test or module is being checked)."""
    if _listening:
        _recorded.append((process, output))


ServerProcess.on_close.append(record)
RuntimeClientProcess.on_close.append(record)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARK}(reason): this test's processes may leave a task without its one terminal event "
        "(kill -9, a worker stopped mid-task); the reason says why",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_call_failed] = report.failed
    return report


_call_failed = pytest.StashKey[bool]()


def _check(node: pytest.Item | pytest.Collector, start: int) -> None:
    logs = _recorded[start:]
    del _recorded[start:]
    marker = node.get_closest_marker(MARK)
    if marker is not None:
        if not marker.args or not str(marker.args[0]).strip():
            pytest.fail(f"@pytest.mark.{MARK} needs a reason", pytrace=False)
        return
    if not logs or (isinstance(node, pytest.Item) and node.stash.get(_call_failed, False)):
        return  # a failed test's processes were cut short: its own failure says why
    found = orphans([output.splitlines() for _, output in logs])
    if found:
        processes = "\n".join(f"  {process}" for process, _ in logs)
        pytest.fail(
            f"{len(found)} task(s) without exactly one terminal event in the logs of:\n{processes}\n"
            + "\n".join(found)
            + f"\n(a test that loses tasks by design says so: @pytest.mark.{MARK}('why'))",
            pytrace=False,
        )


@pytest.fixture(scope="module", autouse=True)
def every_task_of_the_module_ends(request: pytest.FixtureRequest) -> Iterator[None]:
    global _listening
    _listening += 1
    start = len(_recorded)
    try:
        yield
    finally:
        _listening -= 1
    _check(request.node, start)


@pytest.fixture(autouse=True)
def every_task_ends(request: pytest.FixtureRequest) -> Iterator[None]:
    start = len(_recorded)
    yield
    _check(request.node, start)
