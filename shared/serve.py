"""Serve one function with uvicorn: ``python -m shared.serve notifications`` (``all``: every one).

The container's entry command. Logs go through the project's pipeline, and SIGTERM
lets in-flight background tasks finish (up to SHUTDOWN_GRACE_SECONDS, fractions
included) before the process exits 0; registered tasks that would not finish in that
grace are handed to the durable queue (``shared.background.handoff``). A wrong setting
exits 2 with one line.
"""

from __future__ import annotations

import argparse
import importlib
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
from shared.settings import ConfigurationError, exit_on_configuration_error, get_settings


class Server(uvicorn.Server):
    """uvicorn's server, telling the task layer when the grace period starts and waiting for its handoffs."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        handoff.begin_shutdown(float(self.config.timeout_graceful_shutdown or 0))
        super().handle_exit(sig, frame)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        handoff.current().log_ready()
        handoff.current().warm_up_in_background()  # long-lived: create the SQS client now, not at SIGTERM

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        await handoff.current().drain()


def _stopped_on_request(signum: int, frame: FrameType | None) -> None:
    """Where uvicorn re-raises SIGTERM after its graceful shutdown: a requested stop is a success (exit 0)."""


def main(argv: list[str] | None = None) -> None:
    port = os.environ.get("PORT", "8000")
    if not port.isdigit():
        with exit_on_configuration_error():
            raise ConfigurationError(f"PORT={port!r}: expected a port number")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("function", nargs="?", default=os.environ.get("FUNCTION", "notifications"))
    parser.add_argument("--app", help="serve another ASGI app instead, as module:attribute")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(port))
    parser.add_argument("--access-log", action="store_true", help="also print uvicorn's access lines")
    args = parser.parse_args(argv)
    target, factory = args.app or f"functions.{args.function}.app:app", False
    if args.function == "all" and not args.app:
        # Every function on one port, each under /<name> as the HTTP API routes them.
        target, factory = "shared.gateway:create_gateway", True
    with exit_on_configuration_error():
        grace = get_settings().shutdown_grace_seconds
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
    signal.signal(signal.SIGTERM, _stopped_on_request)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=args.access_log,
        timeout_graceful_shutdown=grace,  # type: ignore[arg-type]
    )
    server = Server(config)
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
    if threads_still_running():
        # Their tasks ended (cancelled or handed off); the interpreter would wait for the threads at exit.
        lifecycle.exit_process(0, "stopped with sync task threads still running")


if __name__ == "__main__":
    main()
