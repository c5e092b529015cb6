"""The Docker image's entry point: one image, every function, each way it runs.

    docker run -p 8000:8000 IMAGE                     every function on one port, under /<name>
    docker run -p 8000:8000 -e FUNCTION=users IMAGE   one function, at the root
    docker run IMAGE worker                           the durable-task worker, long-polling SQS
    on AWS Lambda (AWS_LAMBDA_RUNTIME_API is set)     the runtime client runs the handler given
                                                      as the command (ImageConfig.Command), else
                                                      functions.$FUNCTION.app.handler
    python -m shared.entrypoint healthcheck           the image's HEALTHCHECK: GET /health

HOST and PORT choose the address (the image sets HOST=0.0.0.0; the default is 127.0.0.1).
"""

from __future__ import annotations

import os
import sys
import urllib.request
from typing import NoReturn

USAGE = __doc__ or ""
COMMANDS = ("serve", "worker", "healthcheck")
EXIT_USAGE = 2
"""A wrong command or setting: one line on stderr, as ``shared.settings`` does (not imported here:
on Lambda this module only execs the runtime client, and pydantic's import would lengthen every cold start)."""


def refuse(line: str) -> NoReturn:
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USAGE)


def lambda_handler_name(command: list[str]) -> str:
    if command:
        return command[0]
    function = os.environ.get("FUNCTION", "")
    if not function or function == "all":
        refuse(
            f"configuration error: FUNCTION={function!r}: "
            "on Lambda, set FUNCTION=<name> or pass the handler as the command"
        )
    return f"functions.{function}.app.handler"


def healthcheck() -> int:
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/health"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


def main(argv: list[str] | None = None) -> None:
    command = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("AWS_LAMBDA_RUNTIME_API"):
        handler = lambda_handler_name(command)
        # exec: the runtime client becomes the process Lambda signals and watches.
        os.execv(sys.executable, [sys.executable, "-m", "awslambdaric", handler])  # noqa: S606
    action = command[0] if command else "serve"
    if action == "serve":
        from shared.serve import main as serve

        serve([os.environ.get("FUNCTION") or "all", *command[1:]])
    elif action == "worker":
        from shared.worker.poller import main as work

        work()
    elif action == "healthcheck":
        raise SystemExit(healthcheck())
    else:
        refuse(f"unknown command {action!r}: expected one of {', '.join(COMMANDS)}")


if __name__ == "__main__":
    main()
