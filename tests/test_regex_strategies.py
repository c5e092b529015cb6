"""tests/support/regex_strategies.py: a character class's strategy is built once, and still generates it."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import regex_strategies

CLASS = r"[^\x00-\x1f\u0600-\u0605\U000f0000-\U0010ffff]"


def test_two_patterns_with_one_class_build_it_once_and_each_still_generates_its_own_strings() -> None:
    regex_strategies.install()
    regex_strategies.install()  # idempotent: never wraps itself
    built_before = len(regex_strategies._classes)
    three, seven = (st.from_regex(re.compile(f"^{CLASS}{{{n}}}\\Z"), fullmatch=True) for n in (3, 7))
    three.validate()
    seven.validate()

    assert len(regex_strategies._classes) - built_before == 1  # built for the first pattern, reused by the second

    @settings(max_examples=30, database=None, derandomize=True)
    @given(three, seven)
    def generated(short: str, long: str) -> None:
        assert re.fullmatch(f"{CLASS}{{3}}", short) and re.fullmatch(f"{CLASS}{{7}}", long)

    generated()
