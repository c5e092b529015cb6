"""A Lambda entry point that notes when the runtime client posts each response (``make bench`` section 1).

``BENCH_HANDLER`` names the real handler (``module.attribute``), ``BENCH_POST_CLOCK`` a file
that gets one line per response: the monotonic time (one clock for every process on Linux)
just before ``awslambdaric`` posts it. Beside the emulator's own times it splits the time to
response into the function's part and the Runtime API's (the emulator is a Python server too).
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
_post = LambdaRuntimeClient.post_invocation_result


def _timed_post(self: LambdaRuntimeClient, *args: Any, **kwargs: Any) -> Any:
    posting = time.monotonic()
    try:
        return _post(self, *args, **kwargs)
    finally:
        _clock.write(f"{posting}\n")


LambdaRuntimeClient.post_invocation_result = _timed_post
