"""A Lambda entry point that notes when the runtime client receives each invocation and posts its response.

``BENCH_HANDLER`` names the real handler (``module.attribute``), ``BENCH_POST_CLOCK`` a file
that gets one line per response: the monotonic time (one clock for every process on Linux)
just before ``awslambdaric`` posts it; ``BENCH_POST_CLOCK`` + ``.received`` one line per
invocation, as ``awslambdaric``'s wait for the next one returns. Beside the emulator's own times
they split the time to response into the function's part and the Runtime API's (the emulator
is a Python server too) on both sides of it (``make bench`` section 1).
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Any

from awslambdaric.lambda_runtime_client import LambdaRuntimeClient

_module, _, _attribute = os.environ["BENCH_HANDLER"].rpartition(".")
handler = getattr(importlib.import_module(_module), _attribute)

_clock = open(os.environ["BENCH_POST_CLOCK"], "a", buffering=1)  # noqa: SIM115 - open for the process's life
_received = open(os.environ["BENCH_POST_CLOCK"] + ".received", "a", buffering=1)  # noqa: SIM115 - likewise
_post = LambdaRuntimeClient.post_invocation_result
_wait = LambdaRuntimeClient.wait_next_invocation


def _timed_wait(self: LambdaRuntimeClient, *args: Any, **kwargs: Any) -> Any:
    invocation = _wait(self, *args, **kwargs)
    _received.write(f"{time.monotonic()}\n")
    return invocation


def _timed_post(self: LambdaRuntimeClient, *args: Any, **kwargs: Any) -> Any:
    posting = time.monotonic()
    try:
        return _post(self, *args, **kwargs)
    finally:
        _clock.write(f"{posting}\n")


LambdaRuntimeClient.post_invocation_result = _timed_post
LambdaRuntimeClient.wait_next_invocation = _timed_wait
