"""Serve one function with uvicorn: ``python -m shared.serve notifications`` (``all``: every one).

The container's entry command. Logs go through the project's pipeline, and SIGTERM
(``docker stop``) or SIGINT (Ctrl-C) lets in-flight background tasks finish (up to
SHUTDOWN_GRACE_SECONDS, fractions included) before the process exits 0, with no
traceback; registered tasks that would not finish in that grace are handed to the
durable queue (``shared.background.handoff``). A wrong setting (PORT, --port, any
variable of ``shared.settings``) exits 2 with one line.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from shared.background import handoff, lifecycle
from shared.background.runner import threads_still_running
from shared.logs import batch_lines, flush_logs
from shared.settings import ConfigurationError, exit_on_configuration_error, get_settings, port_number


class Server(uvicorn.Server):
    """uvicorn's server, telling the task layer when the grace period starts and waiting for its handoffs."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        handoff.begin_shutdown(float(self.config.timeout_graceful_shutdown or 0))
        super().handle_exit(sig, frame)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        batch_lines(asyncio.get_running_loop())  # its lines written together every 5 ms (shared.log_stream)
        handoff.current().log_ready()
        handoff.current().warm_up_in_background()  # long-lived: create the SQS client now, not at SIGTERM

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        await handoff.current().drain()


class _GraceEndIsNoError(logging.Filter):
    """uvicorn's lines about the end of the grace at warning, not error: "Cancel N running task(s),
    timeout graceful shutdown exceeded", and, once the server is stopping, a streamed response it cut
    ("ASGI callable returned without completing response.").

    The end of the grace is part of a clean stop: each request it cuts says so (``request.cut``), and
    each task ends in its own line (handed off, cancelled or lost). An error here would fire
    error-based alerts on every ``docker stop`` that has work in flight.
    """

    def __init__(self, server: uvicorn.Server) -> None:
        super().__init__()
        self.server = server

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and (
            str(record.msg).startswith("Cancel %s running task(s)")
            or (self.server.should_exit and record.msg == "ASGI callable returned without completing response.")
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""``docker stop`` and Ctrl-C: both stop the server gracefully, and the process exits 0."""


def _stopped_on_request(signum: int, frame: FrameType | None) -> None:
    """Where uvicorn re-raises SIGTERM or SIGINT after its graceful shutdown: a requested stop is a success."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("function", nargs="?", default=os.environ.get("FUNCTION", "notifications"))
    parser.add_argument("--app", help="serve another ASGI app instead, as module:attribute")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", help="default: PORT, else 8000")
    parser.add_argument("--access-log", action="store_true", help="also print uvicorn's access lines")
    args = parser.parse_args(argv)
    with exit_on_configuration_error():
        settings = get_settings()
        try:
            port = settings.port if args.port is None else port_number(args.port)
        except ValueError as exc:
            raise ConfigurationError(f"--port {args.port!r}: {exc}") from None
    target, factory = args.app or f"functions.{args.function}.app:app", False
    if args.function == "all" and not args.app:
        # Every function on one port, each under /<name> as the HTTP API routes them.
        target, factory = "shared.gateway:create_gateway", True
    with exit_on_configuration_error():
        grace = settings.shutdown_grace_seconds
        # Build the app here, not inside uvicorn: a wrong setting is one line, not a traceback.
        module, _, attribute = target.partition(":")
        try:
            loaded = getattr(importlib.import_module(module), attribute)
        except ModuleNotFoundError as exc:
            if exc.name != module and not module.startswith(f"{exc.name}."):
                raise
            functions = sorted(
                path.name
                for path in (Path(__file__).parents[1] / "functions").iterdir()
                if path.is_dir() and (path / "app.py").exists()
            )
            raise ConfigurationError(
                f"FUNCTION={args.function!r}: expected all or one of {', '.join(functions)}"
            ) from None
        app = loaded() if factory else loaded
    for stop_signal in STOP_SIGNALS:
        # uvicorn re-raises the signal it stopped on once it has stopped: SIGINT's default
        # handler would turn that into a KeyboardInterrupt traceback and exit 1.
        signal.signal(stop_signal, _stopped_on_request)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=port,
        log_config=None,
        access_log=args.access_log,
        timeout_graceful_shutdown=grace,  # type: ignore[arg-type]
    )
    server = Server(config)
    logging.getLogger("uvicorn.error").addFilter(_GraceEndIsNoError(server))
    try:
        server.run()
    finally:
        flush_logs()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
    if threads_still_running():
        # Their tasks ended (cancelled or handed off); the interpreter would wait for the threads at exit.
        lifecycle.exit_process(0, "stopped with sync task threads still running")


if __name__ == "__main__":
    main()
