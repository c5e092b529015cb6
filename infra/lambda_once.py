"""One invocation as moto's Lambda asks a container for it, served by Lambda's own runtime client.

moto (``MOTO_DOCKER_LAMBDA_IMAGE``) runs a function's container with the command
``HANDLER EVENT_JSON``, the function's code in ``/var/task`` and its environment, and takes the
last line the container printed as the response: the protocol of the docker-lambda images, which
no registry here can provide. This is that image's entry point (the rehearsal builds it from the
project's own image, infra/deploy_rehearsal.py): the real ``awslambdaric`` runs the handler
against the Runtime API emulator (infra/runtime_api.py), as on Lambda, then the function's output
goes to stderr and the response, one JSON line, last to stdout. Exit 1 when the function failed.
Standard library only besides infra's emulator: the image holds the project's runtime packages.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from infra.runtime_api import InitFailed, lambda_environment

TASK_ROOT = Path(os.environ.get("LAMBDA_TASK_ROOT", "/var/task"))


def invoke_once(handler: str, event: object, timeout_s: float) -> tuple[bool, object]:
    """(succeeded, what the runtime posted: the response, or the error body)."""
    function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "function")
    try:
        with lambda_environment(
            handler, cwd=TASK_ROOT, function_name=function_name, timeout_s=timeout_s, ready_timeout=timeout_s
        ) as environment:
            try:
                invocation = environment.invoke(event, timeout=timeout_s)
                invocation.wait_free(timeout_s)
            finally:
                environment.shutdown()
                sys.stderr.write(environment.process.output())
    except (InitFailed, TimeoutError) as error:
        return False, {"errorType": type(error).__name__, "errorMessage": str(error)}
    if invocation.status == "success":
        return True, invocation.result
    return False, invocation.error


def main(argv: list[str] | None = None) -> int:
    handler, payload = argv if argv is not None else sys.argv[1:]
    # moto points the function at its server as host.docker.internal (the engine's gateway);
    # the rehearsal's moto listens on 127.0.0.1 only, which a container on the host's network reaches.
    if "AWS_ENDPOINT_URL" in os.environ:
        os.environ["AWS_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL"].replace(
            "//host.docker.internal:", "//127.0.0.1:"
        )
    timeout_s = float(os.environ.get("AWS_LAMBDA_FUNCTION_TIMEOUT", "30"))
    succeeded, response = invoke_once(handler, json.loads(payload), timeout_s)
    sys.stderr.flush()
    print(json.dumps(response), flush=True)  # the last line: what moto returns as the payload
    return 0 if succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
