"""Real server processes on 127.0.0.1 for tests about HTTP timing and shutdown."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, TypeVar

import httpx

from infra.json_lines import parse_json_lines as parse_json_lines  # its users import it from here

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early with {process.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not become healthy in {timeout}s")


class ServerProcess:
    """A subprocess whose combined output goes to a file, so it never blocks on a pipe.

    ``on_close``: called with (command, everything it printed) when it is closed; the suite's
    task-lifecycle check (tests/support/lifecycle.py) listens there.
    """

    on_close: ClassVar[list[Callable[[str, str], None]]] = []

    def __init__(self, command: Sequence[str], env: dict[str, str], port: int) -> None:
        self.port = port
        self.command = list(command)
        self.base_url = f"http://127.0.0.1:{port}"
        self._output = tempfile.NamedTemporaryFile(prefix="server-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(  # noqa: S603 (the caller's own command: a server of this project)
            self.command, cwd=ROOT, env={**os.environ, **env}, stdout=self._output, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return Path(self._output.name).read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def close(self) -> None:
        self.stop()
        output = self.output()
        for listener in self.on_close:
            listener(" ".join(self.command), output)
        self._output.close()
        os.unlink(self._output.name)


def start_function(function: str, env: dict[str, str], *extra_args: str) -> ServerProcess:
    """``python -m shared.serve FUNCTION``: the container's own entry command."""
    port = free_port()
    server = ServerProcess(
        [sys.executable, "-m", "shared.serve", function, "--port", str(port), *extra_args], env, port
    )
    try:
        wait_until_healthy(f"{server.base_url}/health", server.process)
    except Exception:
        print(server.output())
        server.close()
        raise
    return server


T = TypeVar("T")


def eventually(probe: Callable[[], T | None], timeout: float = 30.0, what: str = "the background effect") -> T:
    """Background work lands after the response: poll ``probe`` until it returns something."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not appear within {timeout:.0f}s")
        time.sleep(0.2)
