"""FastAPI's refusal of ``pydantic.v1`` models, without importing ``pydantic.v1`` at every cold start.

To refuse a ``pydantic.v1`` model with a clear error, FastAPI asks of every parameter and
response annotation whether it is one, and the question imports ``pydantic.v1`` (a second
copy of pydantic, ~12 ms on Lambda's python3.12) even in an app that never uses it. No class
or instance is a ``pydantic.v1`` model while ``pydantic.v1`` has not been imported, so the
answer is "no" without importing it; once anything has imported it, FastAPI's own check
answers, and a ``pydantic.v1`` model is still refused as FastAPI refuses it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

_MODULE = "pydantic.v1"


def _unless_never_imported(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    def check_if_imported(value: Any) -> bool:
        return _MODULE in sys.modules and check(value)

    check_if_imported.wraps_pydantic_v1_check = True  # type: ignore[attr-defined]
    return check_if_imported


def install() -> bool:
    """Make FastAPI's checks import nothing; idempotent. False if this FastAPI has no such checks."""
    import fastapi.encoders
    from fastapi._compat import shared

    patched = False
    for module, name in (
        (shared, "is_pydantic_v1_model_class"),
        (shared, "is_pydantic_v1_model_instance"),
        (fastapi.encoders, "is_pydantic_v1_model_instance"),
    ):
        check = getattr(module, name, None)
        if check is None:
            continue
        if not getattr(check, "wraps_pydantic_v1_check", False):
            setattr(module, name, _unless_never_imported(check))
        patched = True
    return patched
