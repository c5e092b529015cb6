"""How the suite is spread over pytest-xdist workers (``make test`` runs ``pytest -n``; registered in conftest).

``--dist loadfile``: a test file runs whole on one worker, so its module fixtures (servers,
containers, a Docker network, `sam local` invocations) are made once and its tests share
them as they do in one process; files that share a session build (``sam_build``, ``image``)
take it from the run's directory under a file lock (tests/support/fixtures.py).

``--no-loadscope-reorder``: files are handed out in the order ``pytest_collection_modifyitems``
leaves them: the fuzz first, then the longest files (``LONGEST_FIRST``), so that no long file
starts last and runs on alone while the other workers are done.

What is judged over the whole run is judged on the controller, from what each worker sends
when its session ends (``config.workeroutput``): the IAM grants its tests declared and used
(the suite fails on a grant no test on any worker needed), and the image to remove once no
worker runs it any more. Without xdist the same hooks run in the one process.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.fixtures import IMAGE_OUTPUT, remove_image
from tests.support.iam import COVERAGE, Coverage
from tests.support.sam import RUN_FILES

COVERAGE_OUTPUT = "iam_coverage"

FUZZ = "tests/test_openapi_fuzz.py"
LONGEST_FIRST = [
    FUZZ,
    "tests/test_scaffold.py",
    "tests/test_container_sam.py",  # makes the session's sam build (test_sam_build, test_deploy_rehearsal wait)
    "tests/test_bench_smoke.py",
    "tests/test_container_sam_api.py",
    "tests/test_container.py",  # makes the session's image (test_container_compose waits)
    "tests/test_local_stack.py",
    "tests/test_template.py",
    "tests/test_container_compose.py",
    "tests/test_deploy_rehearsal.py",
    "tests/test_durable_poller.py",
    "tests/test_server.py",
    "tests/test_metrics.py",
    "tests/test_task_lifecycle.py",
    "tests/test_handoff.py",
    "tests/test_sam_build.py",
    "tests/test_lambda_extension.py",
]
"""The files that take longest (``make test`` prints the slowest tests), longest first."""

_images: set[str] = set()


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test its own id; the fuzz first, in an interpreter no other test has touched; then the longest files.

    Hypothesis reads lambdas' source with ``ast.parse`` while it generates; on CPython 3.11
    the AST constructor's recursion counter is shared by threads and can be left off by
    earlier tests' threads (python/cpython#106905), which made it fail as flaky late in a run.
    Under xdist the fuzz file is the first one handed out: its worker runs it first.
    """
    give_each_test_its_own_id(items)
    rank = {path: index for index, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.partition("::")[0], len(rank)))


def _set_id(item: pytest.Item, nodeid: str) -> None:
    """pytest has no public way to rename a collected test; a version where this stops working
    is caught by the repeated-id check right after it."""
    if hasattr(item, "_id"):  # pytest 9: a NodeId
        item._id = type(item._id).parse(nodeid)
    else:
        item._nodeid = nodeid


def give_each_test_its_own_id(items: list[pytest.Item]) -> None:
    """xdist hands tests out by id: of several tests sharing one, it runs the first and reports nothing of the others.

    schemathesis gives each operation's test of a schema the schema test's own id
    (``test_items_schema``, once per operation): each gets its operation's label, as
    schemathesis's own lazy fixture does (``test_items_schema[POST /items]``). Any other
    repeated id stops the run before it starts, naming it.
    """
    for item in items:
        label = getattr(item, "operation_label", None)
        if label and not item.nodeid.endswith("]"):
            _set_id(item, f"{item.nodeid}[{label}]")
    repeated = sorted(nodeid for nodeid, count in Counter(item.nodeid for item in items).items() if count > 1)
    if repeated:
        raise pytest.UsageError(f"tests sharing an id (pytest-xdist would run one of each): {', '.join(repeated)}")


_runs: set[str] = set()


def receive(output: dict[str, Any], coverage: Coverage, images: set[str]) -> None:
    """What one worker sent when its session ended."""
    if COVERAGE_OUTPUT in output:
        coverage.merge(output[COVERAGE_OUTPUT])
    if IMAGE_OUTPUT in output:
        images.add(output[IMAGE_OUTPUT])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object | None) -> None:
    """On the controller: a worker is done (``node.workeroutput`` is empty when it crashed)."""
    receive(getattr(node, "workeroutput", {}) or {}, COVERAGE, _images)
    _runs.add(node.workerinput["testrunuid"])


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """A worker sends its IAM coverage; the controller removes the image every worker is done with.

    ``tryfirst``: before conftest's ``pytest_sessionfinish`` judges the coverage.
    """
    if is_worker(session.config):
        session.config.workeroutput[COVERAGE_OUTPUT] = COVERAGE.export()  # type: ignore[attr-defined]
        return
    for tag in sorted(_images):
        remove_image(tag)
    _images.clear()
    for run in _runs:
        for path in Path(tempfile.gettempdir()).glob(RUN_FILES.format(run=run) + "*"):
            path.unlink(missing_ok=True)
