"""Build the strategy of each regex character class once per process, for schemathesis's fuzz tests.

schemathesis makes the coverage cases of the schema fuzz tests while it collects them, in every
worker of ``make test``, and makes a new pattern for each length bound of a string
(``[^...]{33}``, ``[^...]{1999}``, ...). hypothesis builds the strategy of a pattern's character
class by adding each code point of each range one at a time, and the schemas' "no control or
format characters" class (``[^\\x00-\\x08...\\U000f0000-\\U0010ffff]``) holds some 140,000 of them:
about 0.7 s of CPU per pattern, 15 patterns per collection.

``install()`` keeps the strategy hypothesis built for a class (the same parse, flags and alphabet
give the same strategy) and hands it out again. What is generated does not change. It wraps
hypothesis's ``regex._strategy``, which is internal: if a hypothesis upgrade renames it, the
install fails at once, naming it, instead of silently costing the time again.
"""

from __future__ import annotations

from typing import Any

from hypothesis.strategies._internal import regex as hypothesis_regex

_build = hypothesis_regex._strategy
_classes: dict[tuple[Any, ...], Any] = {}


def _class_built_once(codes: Any, context: Any, is_unicode: bool, *, alphabet: Any) -> Any:
    """hypothesis's ``_strategy``, reusing what it built for an identical character class (``[...]``)."""
    if not (isinstance(codes, tuple) and getattr(codes[0], "name", None) == "IN"):  # sre: IN is [...]
        return _build(codes, context, is_unicode, alphabet=alphabet)
    key = (repr(codes[1]), int(context.flags), is_unicode, repr(alphabet))
    if key not in _classes:
        _classes[key] = _build(codes, context, is_unicode, alphabet=alphabet)
    return _classes[key]


def install() -> None:
    """Before schemathesis collects the fuzz tests."""
    if hypothesis_regex._strategy is not _class_built_once:
        hypothesis_regex._strategy = _class_built_once
