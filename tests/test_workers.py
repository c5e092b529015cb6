"""How `make test` spreads the suite over its workers (tests/support/workers.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.sam import ROOT
from tests.support.workers import FUZZ, LONGEST_FIRST, give_each_test_its_own_id


def test_every_file_handed_out_first_exists_and_the_fuzz_leads() -> None:
    assert LONGEST_FIRST[0] == FUZZ
    assert [path for path in LONGEST_FIRST if not (ROOT / path).is_file()] == []
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)


def test_make_test_runs_the_files_whole_in_the_order_collection_leaves_them() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "--dist loadfile --no-loadscope-reorder" in makefile


def test_each_operation_of_a_schema_fuzz_is_a_test_of_its_own_id() -> None:
    """xdist runs one test per id: the fuzz's operations once shared their test's id, all but one were lost."""
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", FUZZ, "-k", "items_schema"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout.splitlines()
    ids = [line for line in collected if line.startswith(f"{FUZZ}::")]
    assert f"{FUZZ}::test_items_schema[POST /items]" in ids, ids
    assert len(ids) > 1 and len(set(ids)) == len(ids), ids


class Item:
    def __init__(self, nodeid: str) -> None:
        self._nodeid = nodeid

    @property
    def nodeid(self) -> str:
        return self._nodeid


def test_a_repeated_id_stops_the_run_naming_it() -> None:
    items = [Item("tests/test_a.py::test_one"), Item("tests/test_a.py::test_one"), Item("tests/test_a.py::test_two")]
    with pytest.raises(pytest.UsageError, match=r"tests sharing an id .*: tests/test_a.py::test_one$"):
        give_each_test_its_own_id(items)  # type: ignore[arg-type]
