"""CPU time of one warm Lambda handler call, in-process: ``python -m bench.handler_cpu HANDLER [CALLS]``.

Prints JSON ``{"us": ...}``: the median over rounds of the process CPU time per
``handler(event, context)`` call of ``GET /health`` (the HTTP API event of section 1),
with the handler's log lines going to ``/dev/null``. No extension, no Runtime API: what is
left is the handler's own work, the part of the time to response that the function pays.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import sys
import time
from typing import Any

from bench.lambda_runtime import EVENT, health_event
from infra.runtime_api import load_event

CALLS, ROUNDS = 400, 5


class Context:
    aws_request_id = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"
    function_name = "bench"
    memory_limit_in_mb = "512"
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:bench"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def main(spec: str, calls: int = CALLS) -> None:
    real_stdout = sys.stdout
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the handler's log lines, for the process's life
    module, _, attribute = spec.rpartition(".")
    handler: Any = getattr(importlib.import_module(module), attribute)
    event, context = health_event(load_event(EVENT)), Context()
    for _ in range(calls):
        assert handler(event, context)["statusCode"] == 200
    rounds = []
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(calls):
            handler(event, context)
        rounds.append((time.process_time() - started) / calls * 1e6)
    print(json.dumps({"us": statistics.median(rounds)}), file=real_stdout)


if __name__ == "__main__":
    main(sys.argv[1], *(int(argument) for argument in sys.argv[2:3]))
