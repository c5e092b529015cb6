"""A Lambda Runtime API + Extensions API emulator, and the real runtime client against it.

Used by the Lambda tests, the packaging tests (``sam build`` output, the image's entry
command) and ``make bench`` (plain Mangum against this template). Everything binds
127.0.0.1 on a free port. No Docker, no AWS.

Typical use::

    from infra.runtime_api import lambda_environment, load_event

    with lambda_environment("functions.notifications.app.handler", env={"LOG_LEVEL": "INFO"}) as env:
        invocation = env.invoke(load_event("notifications-send-notification-http-api.json"))
        invocation.wait_free()
        invocation.result          # what the runtime posted, parsed JSON (e.g. {"statusCode": 200, ...})
        invocation.time_to_response, invocation.time_to_free   # seconds since it was handed out
        env.logs(function_request_id=invocation.request_id)    # the function's JSON log lines

``RuntimeApiEmulator`` (the server; ``start()``/``stop()`` or ``with``):
  - ``address``: ``"127.0.0.1:PORT"``, the value of ``AWS_LAMBDA_RUNTIME_API``.
  - ``submit(event, trace_id=None, timeout_s=None, request_id=None) -> Invocation``: queue an
    invocation (``event``: any JSON value, or raw ``bytes`` for malformed payloads). It is handed
    out only once the environment is free. ``invoke(...)`` = submit + wait for the response.
  - ``wait_ready(timeout)``: until init is complete (the runtime and every extension asked for
    their next event); raises ``InitFailed`` if the runtime posted ``/runtime/init/error``.
  - ``shutdown(reason="spindown", timeout)``: waits until the environment is free, then sends
    SHUTDOWN to the extensions registered for it (``RuntimeClientProcess.shutdown`` then
    sends SIGTERM to the runtime, as Lambda does).
  - records: ``invocations``, ``extensions`` (name, id, events, external), ``init_error``,
    ``extension_next_ports`` (the client port of each ``event/next``: one per TCP connection),
    ``timeline`` (``(monotonic_s, what, detail)`` in order), ``wall(monotonic_s)``. Timeline
    entries: ``extension.registered``, ``extension.next``, ``registration.closed``, ``runtime.next``,
    ``init.complete``, ``invocation.handed_out``, ``runtime.success`` / ``runtime.error``,
    ``environment.free``, ``shutdown.sent``, ``init.error``, plus ``record(what)`` from outside.
  - ``add_listener(fn) -> remove``: ``fn(what, detail)`` runs synchronously at each timeline entry,
    before anyone is answered, to observe the world at exactly that moment (a file, the logs).
  - options: ``function_name``, ``timeout_s`` (invocation deadline), ``extensions_api=False``
    (register answers 404, as an API without extensions would), ``external_extensions``
    (names treated as external, i.e. found in /opt/extensions; every other name is internal).

Lambda's rules it enforces: an invocation ends when the runtime posted its response (or error)
AND every extension registered for INVOKE asked for its next event; only then is the next one
handed out. Registration closes when the runtime first asks for an invocation (403
``Extension.RegistrationClosed``). Internal extensions may not register for SHUTDOWN (403
``Extension.InvalidEventType``, ``ShutdownEventNotSupportedForInternalExtension``).

``Invocation``: ``request_id``, ``handed_out_at`` / ``responded_at`` / ``freed_at`` (monotonic),
``status`` ("success" | "error"), ``result`` (parsed response), ``error`` (parsed error body),
``error_type`` (the ``Lambda-Runtime-Function-Error-Type`` header, else the body's ``errorType``), ``wait_response()``,
``wait_free()``, ``time_to_response``, ``time_to_free``.

``RuntimeClientProcess(api, handler, env=None, command=None, cwd=ROOT)``: the function process,
by default ``python -m awslambdaric HANDLER`` with the environment Lambda sets (``lambda_env``:
``_HANDLER``, ``LAMBDA_TASK_ROOT``, ``AWS_LAMBDA_FUNCTION_*``, fake credentials, ``LOG_FORMAT=json``);
``command``/``cwd`` run anything else (e.g. a ``sam build`` directory, an image's entry command).
``output()``/``logs(event, **keys)`` (still readable after ``close()``), ``pid``, ``alive()``,
``shutdown()`` (wait until free, SHUTDOWN to extensions, SIGTERM, SIGKILL after a grace; returns
the exit code).
``lambda_environment(handler, env=..., command=..., cwd=..., **emulator_options)`` starts both,
waits for init and yields a ``LambdaEnvironment`` (``api``, ``process``, ``invoke``, ``submit``,
``logs``, ``shutdown``).
``ExternalExtension(api, name, events)``: an external extension as a thread of the test (e.g. to
receive SHUTDOWN); register it before the runtime starts.
``runtime_takes_an_invocation(api, respond=True)``: a runtime by hand, in a thread: GET
invocation/next, then (``respond``) POST an empty JSON response.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from infra.json_lines import parse_json_lines

ROOT = Path(__file__).resolve().parents[1]
EVENTS_DIR = ROOT / "infra" / "events"

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"


def load_event(name: str) -> dict[str, Any]:
    """An event from ``infra/events`` (generated by ``sam local generate-event``)."""
    event: dict[str, Any] = json.loads((EVENTS_DIR / name).read_text())
    return event


def _trace_header() -> str:
    root = f"1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"
    return f"Root={root};Parent={uuid.uuid4().hex[:16]};Sampled=1"


class InitFailed(RuntimeError):
    """The runtime reported an init error, or exited before init completed."""


@dataclass
class Invocation:
    payload: bytes
    request_id: str
    trace_id: str | None
    timeout_s: float
    deadline_ms: int | None = None
    handed_out_at: float | None = None
    responded_at: float | None = None
    freed_at: float | None = None
    status: str | None = None
    body: bytes | None = None
    error_type: str | None = None
    _responded: threading.Event = field(default_factory=threading.Event, repr=False)
    _freed: threading.Event = field(default_factory=threading.Event, repr=False)

    def wait_response(self, timeout: float = 30.0) -> Invocation:
        if not self._responded.wait(timeout):
            raise TimeoutError(f"no response for invocation {self.request_id} within {timeout}s")
        return self

    def wait_free(self, timeout: float = 30.0) -> Invocation:
        if not self._freed.wait(timeout):
            raise TimeoutError(f"environment not free after invocation {self.request_id} within {timeout}s")
        return self

    @property
    def result(self) -> Any:
        if self.status != "success" or self.body is None:
            raise AssertionError(f"invocation {self.request_id} did not succeed: {self.status} {self.body!r}")
        return json.loads(self.body)

    @property
    def error(self) -> Any:
        if self.status != "error" or self.body is None:
            raise AssertionError(f"invocation {self.request_id} did not fail: {self.status} {self.body!r}")
        return json.loads(self.body)

    @property
    def time_to_response(self) -> float:
        assert self.handed_out_at is not None and self.responded_at is not None
        return self.responded_at - self.handed_out_at

    @property
    def time_to_free(self) -> float:
        assert self.handed_out_at is not None and self.freed_at is not None
        return self.freed_at - self.handed_out_at


@dataclass
class Extension:
    name: str
    id: str
    events: list[str]
    external: bool
    waiting: bool = False
    pending: list[dict[str, Any]] = field(default_factory=list)


class RuntimeApiEmulator:
    def __init__(
        self,
        *,
        function_name: str = "fastapi-tasks-test",
        timeout_s: float = 30.0,
        extensions_api: bool = True,
        external_extensions: Sequence[str] = (),
    ) -> None:
        self.function_name = function_name
        self.timeout_s = timeout_s
        self.extensions_api = extensions_api
        self.external_extensions = set(external_extensions)
        self.invocations: list[Invocation] = []
        self.extensions: list[Extension] = []
        self.init_error: dict[str, Any] | None = None
        self.timeline: list[tuple[float, str, str]] = []
        self._queue: list[Invocation] = []
        self._current: Invocation | None = None
        self._runtime_waiting = False
        self._runtime_assigned: Invocation | None = None
        self._init_done = False
        self._ready = False
        self._shutdown_requested: str | None = None
        self._shutdown_sent = False
        self._closed = False
        self._cond = threading.Condition()
        self._wall_offset = time.time() - time.monotonic()
        self._listeners: list[Callable[[str, str], None]] = []
        self.extension_next_ports: list[int] = []
        self._server = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_port}"

    def start(self) -> RuntimeApiEmulator:
        self._thread = threading.Thread(target=self._server.serve_forever, name="runtime-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> RuntimeApiEmulator:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def wall(self, monotonic_s: float) -> float:
        """A recorded monotonic time as epoch seconds, comparable with log timestamps."""
        return monotonic_s + self._wall_offset

    # --- driving it -----------------------------------------------------------------------

    def submit(
        self,
        event: Any,
        *,
        trace_id: str | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> Invocation:
        payload = event if isinstance(event, bytes) else json.dumps(event).encode()
        invocation = Invocation(
            payload=payload,
            request_id=request_id or str(uuid.uuid4()),
            trace_id=trace_id or _trace_header(),
            timeout_s=self.timeout_s if timeout_s is None else timeout_s,
        )
        with self._cond:
            self.invocations.append(invocation)
            self._queue.append(invocation)
            self._advance()
        return invocation

    def invoke(self, event: Any, *, timeout: float = 30.0, **options: Any) -> Invocation:
        """Submit ``event`` and wait for the runtime's response (not for the environment)."""
        return self.submit(event, **options).wait_response(timeout)

    def wait_ready(self, timeout: float = 30.0, alive: Any = None) -> None:
        """Until init completed; ``alive()`` returning False (process died) aborts the wait."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.ready and self.init_error is None:
                if alive is not None and not alive():
                    raise InitFailed("the runtime process exited during init")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"init did not complete within {timeout}s")
                self._cond.wait(min(remaining, 0.1))
            if self.init_error is not None:
                raise InitFailed(f"init error: {self.init_error}")

    def shutdown(self, reason: str = "spindown", timeout: float = 30.0) -> None:
        """Once the environment is free, send SHUTDOWN to the extensions registered for it."""
        with self._cond:
            self._shutdown_requested = reason
            self._advance()
            if not self._cond.wait_for(lambda: self._shutdown_sent, timeout):
                raise TimeoutError(f"environment not free for shutdown within {timeout}s")

    @property
    def ready(self) -> bool:
        """Init complete: the runtime and every extension asked for their next event."""
        return self._ready

    def extension_named(self, name: str) -> Extension:
        return next(extension for extension in self.extensions if extension.name == name)

    # --- the state machine (always under self._cond) ----------------------------------------

    def record(self, what: str, detail: str = "") -> None:
        """Add an outside happening (e.g. a signal sent) to the timeline."""
        with self._cond:
            self._record(what, detail)

    def add_listener(self, listener: Callable[[str, str], None]) -> Callable[[], None]:
        """Call ``listener(what, detail)`` at each timeline entry, synchronously, before anyone
        is answered: what it observes (a file, the logs) is the state at that exact point.
        It runs under the emulator's lock: keep it short and never call the emulator from it.
        Returns the function that removes it."""
        with self._cond:
            self._listeners.append(listener)

        def remove() -> None:
            with self._cond:
                self._listeners.remove(listener)

        return remove

    def _record(self, what: str, detail: str = "") -> float:
        now = time.monotonic()
        self.timeline.append((now, what, detail))
        for listener in self._listeners:
            listener(what, detail)
        return now

    def _invoke_subscribers(self) -> list[Extension]:
        return [extension for extension in self.extensions if "INVOKE" in extension.events]

    def _advance(self) -> None:
        if self._init_done and not self._ready and all(extension.waiting for extension in self.extensions):
            self._ready = True
            self._record("init.complete")
        current = self._current
        responded = current is not None and current.status is not None
        if responded and all(extension.waiting for extension in self._invoke_subscribers()):
            assert current is not None
            current.freed_at = self._record("environment.free", current.request_id)
            current._freed.set()
            self._current = None
        if self._current is None and self._ready and self._runtime_waiting:
            if self._shutdown_requested is None and self._queue and all(e.waiting for e in self.extensions):
                self._hand_out(self._queue.pop(0))
            elif self._shutdown_requested is not None and not self._shutdown_sent:
                self._send_shutdown()
        self._cond.notify_all()

    def _hand_out(self, invocation: Invocation) -> None:
        invocation.handed_out_at = self._record("invocation.handed_out", invocation.request_id)
        invocation.deadline_ms = int((time.time() + invocation.timeout_s) * 1000)
        self._current = invocation
        self._runtime_waiting = False
        self._runtime_assigned = invocation
        for extension in self._invoke_subscribers():
            extension.waiting = False
            extension.pending.append(
                {
                    "eventType": "INVOKE",
                    "deadlineMs": invocation.deadline_ms,
                    "requestId": invocation.request_id,
                    "invokedFunctionArn": self.function_arn,
                    "tracing": {"type": "X-Amzn-Trace-Id", "value": invocation.trace_id},
                }
            )

    def _send_shutdown(self) -> None:
        self._shutdown_sent = True
        self._record("shutdown.sent", self._shutdown_requested or "")
        deadline_ms = int(time.time() * 1000) + 2000
        for extension in self.extensions:
            if "SHUTDOWN" in extension.events:
                extension.waiting = False
                extension.pending.append(
                    {"eventType": "SHUTDOWN", "shutdownReason": self._shutdown_requested, "deadlineMs": deadline_ms}
                )

    @property
    def function_arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{self.function_name}"

    # --- endpoints (called from server threads) ---------------------------------------------

    def register(self, name: str, body: bytes) -> tuple[int, dict[str, str], Any]:
        if not self.extensions_api:
            return 404, {}, {"errorType": "NotFound", "errorMessage": "no Extensions API here"}
        try:
            events = list(json.loads(body or b"{}").get("events", []))
        except (ValueError, AttributeError):
            return 403, {}, {"errorType": "Extension.InvalidRequestFormat", "errorMessage": "bad JSON body"}
        external = name in self.external_extensions
        with self._cond:
            if not name:
                return 403, {}, {"errorType": "Extension.InvalidExtensionName", "errorMessage": "Empty extension name"}
            if self._init_done:
                return 403, {}, {"errorType": "Extension.RegistrationClosed", "errorMessage": "registration closed"}
            if any(extension.name == name for extension in self.extensions):
                return 403, {}, {"errorType": "Extension.InvalidState", "errorMessage": "name already registered"}
            for event in events:
                if event not in ("INVOKE", "SHUTDOWN"):
                    return 403, {}, {"errorType": "Extension.InvalidEventType", "errorMessage": event}
                if event == "SHUTDOWN" and not external:
                    return (
                        403,
                        {},
                        {
                            "errorType": "Extension.InvalidEventType",
                            "errorMessage": "SHUTDOWN: ShutdownEventNotSupportedForInternalExtension",
                        },
                    )
            extension = Extension(name=name, id=str(uuid.uuid4()), events=events, external=external)
            self.extensions.append(extension)
            self._record("extension.registered", name)
        metadata = {"functionName": self.function_name, "functionVersion": "$LATEST", "handler": "handler"}
        return 200, {"Lambda-Extension-Identifier": extension.id}, metadata

    def extension_next(self, extension_id: str) -> tuple[int, dict[str, str], Any]:
        with self._cond:
            extension = next((e for e in self.extensions if e.id == extension_id), None)
            if extension is None:
                return 403, {}, {"errorType": "Extension.UnknownExtensionIdentifier", "errorMessage": extension_id}
            extension.waiting = True
            self._record("extension.next", extension.name)
            self._advance()
            self._cond.wait_for(lambda: bool(extension.pending) or self._closed)
            if self._closed:
                return 503, {}, {"errorType": "Emulator.Closed", "errorMessage": "emulator stopped"}
            event = extension.pending.pop(0)
        return 200, {"Lambda-Extension-Event-Identifier": str(uuid.uuid4())}, event

    def runtime_next(self) -> tuple[int, dict[str, str], bytes]:
        with self._cond:
            if not self._init_done:
                self._init_done = True
                self._record("registration.closed")
            self._runtime_waiting = True
            self._record("runtime.next")
            self._advance()
            self._cond.wait_for(lambda: self._runtime_assigned is not None or self._closed)
            if self._closed or self._runtime_assigned is None:
                return 503, {}, b'{"errorType": "Emulator.Closed"}'
            invocation, self._runtime_assigned = self._runtime_assigned, None
        headers = {
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(invocation.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": self.function_arn,
            "Lambda-Runtime-Trace-Id": invocation.trace_id or "",
            "Content-Type": "application/json",
        }
        return 200, headers, invocation.payload

    def runtime_result(self, request_id: str, status: str, body: bytes, error_type: str | None) -> int:
        with self._cond:
            invocation = self._current
            if invocation is None or invocation.request_id != request_id or invocation.status is not None:
                return 400
            invocation.status = status
            invocation.body = body
            invocation.error_type = error_type or (_error_type_in(body) if status == "error" else None)
            invocation.responded_at = self._record(f"runtime.{status}", request_id)
            invocation._responded.set()
            self._advance()
        return 202

    def runtime_init_error(self, body: bytes, error_type: str | None) -> int:
        with self._cond:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = body.decode(errors="replace")
            self.init_error = {"type": error_type, "body": parsed}
            self._record("init.error", error_type or "")
            self._cond.notify_all()
        return 202


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # the function process was killed
            super().handle_error(request, client_address)


def _error_type_in(body: bytes) -> str | None:
    """awslambdaric puts the error type in the body rather than the header."""
    try:
        error_type = json.loads(body).get("errorType")
    except (ValueError, AttributeError):
        return None
    return error_type if isinstance(error_type, str) else None


def _handler_for(api: RuntimeApiEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, chunked bodies, Expect: 100-continue

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks: list[bytes] = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def setup(self) -> None:
            super().setup()
            # Like Lambda's own (Go) server: no Nagle delay between headers and body.
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _send(self, status: int, headers: Mapping[str, str], body: Any) -> None:
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if "Content-Type" not in headers:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self._headers_buffer.append(b"\r\n" + payload)  # type: ignore[attr-defined]  # one write
            try:
                self.flush_headers()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the process went away (killed, or the test is over)

        def do_GET(self) -> None:
            if self.path == "/2018-06-01/runtime/invocation/next":
                self._send(*api.runtime_next())
            elif self.path == "/2020-01-01/extension/event/next":
                api.extension_next_ports.append(self.client_address[1])
                self._send(*api.extension_next(self.headers.get("Lambda-Extension-Identifier", "")))
            else:
                self._send(404, {}, {"errorType": "NotFound", "errorMessage": self.path})

        def do_POST(self) -> None:
            body = self._body()
            parts = self.path.strip("/").split("/")
            error_type = self.headers.get("Lambda-Runtime-Function-Error-Type")
            if self.path == "/2020-01-01/extension/register":
                self._send(*api.register(self.headers.get("Lambda-Extension-Name", ""), body))
            elif self.path == "/2018-06-01/runtime/init/error":
                self._send(api.runtime_init_error(body, error_type), {}, {"status": "OK"})
            elif len(parts) == 5 and parts[:3] == ["2018-06-01", "runtime", "invocation"]:
                kind = {"response": "success", "error": "error"}.get(parts[4])
                if kind is None:
                    self._send(404, {}, {"errorType": "NotFound", "errorMessage": self.path})
                    return
                status = api.runtime_result(parts[3], kind, body, error_type)
                self._send(status, {}, {"status": "OK"} if status == 202 else {"errorType": "InvalidRequestID"})
            else:
                self._send(404, {}, {"errorType": "NotFound", "errorMessage": self.path})

    return Handler


class ExternalExtension:
    """An external extension (as if shipped in /opt/extensions), run as a thread of the test.

    Register it before the runtime starts (registration closes at the runtime's first
    ``next``); it records every event it gets, and stops after SHUTDOWN.
    """

    def __init__(self, api: RuntimeApiEmulator, name: str, events: Sequence[str] = ("SHUTDOWN",)) -> None:
        api.external_extensions.add(name)
        self.api = api
        self.name = name
        self.events: list[dict[str, Any]] = []
        status, headers, body = self._call(
            "POST",
            "/2020-01-01/extension/register",
            {"Lambda-Extension-Name": name},
            json.dumps({"events": list(events)}).encode(),
        )
        if status != 200:
            raise RuntimeError(f"register {name}: {status} {body!r}")
        self.id = headers["Lambda-Extension-Identifier"]
        self._thread = threading.Thread(target=self._poll, name=f"extension-{name}", daemon=True)
        self._thread.start()

    def join(self, timeout: float = 10.0) -> None:
        """Wait until it stopped (after SHUTDOWN, or the API going away): ``events`` is then complete."""
        self._thread.join(timeout)

    def _call(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[int, dict[str, str], Any]:
        connection = http.client.HTTPConnection(self.api.address)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), json.loads(response.read() or b"null")
        finally:
            connection.close()

    def _poll(self) -> None:
        while True:
            try:
                status, _, event = self._call(
                    "GET", "/2020-01-01/extension/event/next", {"Lambda-Extension-Identifier": self.id}
                )
            except OSError:
                return
            if status != 200:
                return
            self.events.append(event)
            if event.get("eventType") == "SHUTDOWN":
                return


# --- the runtime client process ----------------------------------------------------------


def lambda_env(api: RuntimeApiEmulator, handler: str, task_root: Path = ROOT) -> dict[str, str]:
    """The environment Lambda gives a function process, with fake credentials."""
    return {
        "AWS_LAMBDA_RUNTIME_API": api.address,
        "_HANDLER": handler,
        "LAMBDA_TASK_ROOT": str(task_root),
        "LAMBDA_RUNTIME_DIR": str(Path(sys.executable).parent),
        "PYTHONPATH": str(task_root),
        "AWS_LAMBDA_FUNCTION_NAME": api.function_name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{api.function_name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2026/01/01/[$LATEST]0123456789abcdef0123456789abcdef",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_EXECUTION_ENV": f"AWS_Lambda_python{sys.version_info.major}.{sys.version_info.minor}",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "LOG_FORMAT": "json",
        "TZ": "UTC",
    }


def runtime_takes_an_invocation(api: RuntimeApiEmulator, *, respond: bool = True) -> threading.Thread:
    """What a runtime does once its init is over: GET invocation/next (blocks until one is handed
    out or the emulator stops), then, with ``respond``, POST ``{}`` as its response."""

    def serve() -> None:
        connection = http.client.HTTPConnection(api.address)
        try:
            connection.request("GET", "/2018-06-01/runtime/invocation/next")
            answer = connection.getresponse()
            answer.read()
            if respond and answer.status == 200:
                request_id = answer.getheader("Lambda-Runtime-Aws-Request-Id")
                connection.request("POST", f"/2018-06-01/runtime/invocation/{request_id}/response", body=b"{}")
                connection.getresponse().read()
        except OSError:
            pass  # the emulator stopped
        finally:
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


class RuntimeClientProcess:
    """The function process; its combined output goes to a file, read with ``output()``/``logs()``.

    ``on_close``: called with (command, everything it printed) when it is closed (the suite's
    task-lifecycle check listens there).
    """

    on_close: ClassVar[list[Callable[[str, str], None]]] = []

    def __init__(
        self,
        api: RuntimeApiEmulator,
        handler: str,
        *,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.api = api
        self._output = tempfile.NamedTemporaryFile(prefix="lambda-", suffix=".log", delete=False)  # noqa: SIM115
        inherited = {key: value for key, value in os.environ.items() if not key.startswith("AWS_LAMBDA_")}
        self.env = {**inherited, **lambda_env(api, handler, cwd), **(env or {})}
        self.command = list(command or [sys.executable, "-m", "awslambdaric", handler])
        self.process = subprocess.Popen(  # noqa: S603 (the runtime client of this interpreter, or the caller's command)
            self.command, cwd=cwd, env=self.env, stdout=self._output, stderr=subprocess.STDOUT
        )
        self.returncode: int | None = None
        self._final_output: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        """Everything the process printed (still readable after ``close()``)."""
        if self._final_output is not None:
            return self._final_output
        return Path(self._output.name).read_text(errors="replace")

    def logs(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """The JSON log lines printed so far, optionally filtered by event name and key values."""
        return [
            line
            for line in parse_json_lines(self.output())
            if (event is None or line.get("event") == event) and all(line.get(k) == v for k, v in match.items())
        ]

    def shutdown(self, reason: str = "spindown", grace_s: float = 2.0) -> int:
        """Lambda's shutdown: wait until free, SHUTDOWN to extensions, SIGTERM, SIGKILL after ``grace_s``."""
        if self.alive():
            self.api.shutdown(reason)
            self.api.record("runtime.sigterm")
            self.process.send_signal(signal.SIGTERM)
        return self.wait(grace_s)

    def wait(self, timeout: float) -> int:
        try:
            self.returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.returncode = self.process.wait()
        return self.returncode

    def close(self) -> None:
        if self._final_output is not None:
            return
        if self.alive():
            self.process.kill()
            self.process.wait()
        self._final_output = self.output()
        for listener in self.on_close:
            listener(" ".join(self.command), self._final_output)
        self._output.close()
        os.unlink(self._output.name)


@dataclass
class LambdaEnvironment:
    """One execution environment: the emulator and the function process serving it."""

    api: RuntimeApiEmulator
    process: RuntimeClientProcess

    def submit(self, event: Any, **options: Any) -> Invocation:
        return self.api.submit(event, **options)

    def invoke(self, event: Any, *, timeout: float = 30.0, **options: Any) -> Invocation:
        invocation = self.api.submit(event, **options)
        try:
            return invocation.wait_response(timeout)
        except TimeoutError:
            print(self.process.output())
            raise

    def logs(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        return self.process.logs(event, **match)

    def shutdown(self, reason: str = "spindown", grace_s: float = 2.0) -> int:
        return self.process.shutdown(reason, grace_s)


@contextmanager
def lambda_environment(
    handler: str,
    *,
    env: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
    cwd: Path = ROOT,
    ready_timeout: float = 60.0,
    **emulator_options: Any,
) -> Iterator[LambdaEnvironment]:
    """Start the emulator and the function process, wait for init, stop both afterwards."""
    with RuntimeApiEmulator(**emulator_options) as api:
        process = RuntimeClientProcess(api, handler, env=env, command=command, cwd=cwd)
        try:
            try:
                api.wait_ready(ready_timeout, alive=process.alive)
            except (InitFailed, TimeoutError):
                print(process.output())
                raise
            yield LambdaEnvironment(api, process)
        finally:
            process.close()
