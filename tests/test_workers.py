"""How `make test` spreads the suite over its workers (tests/support/workers.py)."""

from __future__ import annotations

from tests.support.sam import ROOT
from tests.support.workers import FUZZ, LONGEST_FIRST


def test_every_file_handed_out_first_exists_and_the_fuzz_leads() -> None:
    assert LONGEST_FIRST[0] == FUZZ
    assert [path for path in LONGEST_FIRST if not (ROOT / path).is_file()] == []
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)


def test_make_test_runs_the_files_whole_in_the_order_collection_leaves_them() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "--dist loadfile --no-loadscope-reorder" in makefile
