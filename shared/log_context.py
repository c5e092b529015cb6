"""The keys bound to the current context with ``structlog.contextvars``, read one at a time.

Low and small: the log pipeline (``shared.logs``) and the metrics (``shared.metrics``) both read them.
"""

from __future__ import annotations

from typing import Any

import structlog

STRUCTLOG_VARS: dict[str, Any] | None = getattr(structlog.contextvars, "_CONTEXT_VARS", None)
PREFIX_LENGTH = len(structlog.contextvars.STRUCTLOG_KEY_PREFIX)


def bound(key: str) -> Any:
    """The value ``structlog.contextvars.bind_contextvars`` bound to ``key`` here, else None.

    One context variable read: ``get_contextvars()`` copies the whole context to find one key,
    which the task metrics would pay three times per request. structlog keeps its variables in
    a private dict; if a release drops it, this falls back to the public call.
    """
    if STRUCTLOG_VARS is None:
        return structlog.contextvars.get_contextvars().get(key)
    var = STRUCTLOG_VARS.get(structlog.contextvars.STRUCTLOG_KEY_PREFIX + key)
    if var is None:
        return None
    value = var.get()
    return None if value is Ellipsis else value
