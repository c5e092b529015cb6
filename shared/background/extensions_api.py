"""The Lambda Extensions API, as an internal extension calls it: register, then ``event/next``.

No SDK offers this API, and ``http.client`` cannot do what the extension needs: send
``event/next`` (the environment may freeze now) from whichever thread sees the invocation
done, *before* anyone has read the answer to the previous ``event/next`` (the INVOKE being
served). That is HTTP/1.1 pipelining on one kept-alive connection, which the Runtime API
serves in order. So this is a small client on a plain socket: requests are written whole
under a lock, answers are read in order by one reader, with their own buffer, so an answer
that arrived early is never lost.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

REGISTER_PATH = "/2020-01-01/extension/register"
NEXT_EVENT_PATH = "/2020-01-01/extension/event/next"
REGISTER_TIMEOUT_S = 5.0
"""Registration answers at once; a hang here would eat the 10 s init budget."""
SEND_TIMEOUT_S = 5.0
"""A request is a few hundred bytes: the socket only refuses them if the API hangs."""
MAX_LINE = 65536


class ExtensionsApiError(Exception):
    """The Extensions API refused a call or could not be reached."""


class ExtensionsApiClient:
    """``register``, then ``send_next`` (any thread) and ``read_event`` (one reader), on one connection.

    A new TCP connection per ``event/next`` would sit between the response and the moment the
    environment is free (billed); the connection is reopened only if the API closed it.
    """

    def __init__(self, address: str) -> None:
        host, _, port = address.partition(":")
        self.address = address
        self._host, self._port = host, int(port or 80)
        self._socket: socket.socket | None = None
        self._buffer = bytearray()
        self._send_lock = threading.Lock()
        self._next_request = b""

    # --- the connection ---------------------------------------------------------------------

    def _connected(self) -> socket.socket:
        if self._socket is None:
            try:
                self._socket = socket.create_connection((self._host, self._port), timeout=REGISTER_TIMEOUT_S)
            except OSError as exc:
                raise ExtensionsApiError(f"cannot connect to {self.address}: {exc}") from exc
            self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Non-blocking: a send or a read of what has arrived is one system call (a socket with a
            # timeout polls before each); the waits, rare, are select() calls of our own.
            self._socket.setblocking(False)
            self._buffer.clear()
        return self._socket

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._buffer.clear()

    def _send(self, request: bytes, call: str) -> None:
        with self._send_lock:
            try:
                sock = self._connected()
                unsent = memoryview(request)
                while unsent:
                    with contextlib.suppress(BlockingIOError):  # full: wait below
                        unsent = unsent[sock.send(unsent) :]
                    if unsent and not select.select([], [sock], [], SEND_TIMEOUT_S)[1]:
                        raise TimeoutError("the Extensions API takes no more data")
            except OSError as exc:
                self.close()
                raise ExtensionsApiError(f"{call}: {type(exc).__name__}: {exc}") from exc

    # --- reading answers (one reader at a time) ---------------------------------------------

    def answer_waiting(self) -> bool:
        """Has (part of) an answer arrived that nobody read yet? Never blocks."""
        sock = self._socket
        if self._buffer:
            return True
        if sock is None:
            return False
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return False
        except OSError:
            return True  # the read reports it
        self._buffer += chunk
        return True  # an empty chunk: the API closed the connection, which the read reports

    def _fill(self, sock: socket.socket, deadline: float | None) -> None:
        while True:
            try:
                chunk = sock.recv(65536)
                break
            except BlockingIOError:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    raise TimeoutError("no answer from the Extensions API") from None
                select.select([sock], [], [], wait)
        if not chunk:
            raise ConnectionResetError("the Extensions API closed the connection")
        self._buffer += chunk

    def _line(self, sock: socket.socket, deadline: float | None) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > MAX_LINE:
                raise ValueError("header line too long")
            self._fill(sock, deadline)
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def _exactly(self, sock: socket.socket, size: int, deadline: float | None) -> bytes:
        while len(self._buffer) < size:
            self._fill(sock, deadline)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _read_answer(self, call: str, timeout: float | None) -> tuple[dict[str, str], Any]:
        """One whole answer (status, headers, body): the JSON of a 200, else ``ExtensionsApiError``."""
        sock = self._socket
        if sock is None:
            raise ExtensionsApiError(f"{call}: no request was sent")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            _, status, _ = self._line(sock, deadline).decode("latin-1").split(" ", 2)
            headers: dict[str, str] = {}
            while line := self._line(sock, deadline):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if headers.get("transfer-encoding", "").lower() == "chunked":
                body = b""
                while size := int(self._line(sock, deadline).split(b";")[0], 16):
                    body += self._exactly(sock, size + 2, deadline)[:-2]
                while self._line(sock, deadline):  # trailers
                    pass
            else:
                body = self._exactly(sock, int(headers.get("content-length", "0")), deadline)
        except (OSError, ValueError) as exc:
            self.close()
            raise ExtensionsApiError(f"{call}: {type(exc).__name__}: {exc}") from exc
        if headers.get("connection", "").lower() == "close":
            self.close()
        if status != "200":
            raise ExtensionsApiError(f"{call}: HTTP {status} {body[:500]!r}")
        try:
            return headers, json.loads(body or b"{}")
        except ValueError as exc:
            raise ExtensionsApiError(f"{call}: {type(exc).__name__}: {exc}") from exc

    # --- the two calls ----------------------------------------------------------------------

    def register(self, name: str, events: Sequence[str]) -> str:
        call = f"POST {REGISTER_PATH}"
        body = json.dumps({"events": list(events)}).encode()
        head = (
            f"POST {REGISTER_PATH} HTTP/1.1\r\nHost: {self.address}\r\nLambda-Extension-Name: {name}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self._send(head.encode("latin-1") + body, call)
        headers, _ = self._read_answer(call, REGISTER_TIMEOUT_S)
        extension_id = headers.get("lambda-extension-identifier")
        if not extension_id:
            raise ExtensionsApiError("register: no Lambda-Extension-Identifier in the answer")
        self._next_request = (
            f"GET {NEXT_EVENT_PATH} HTTP/1.1\r\nHost: {self.address}\r\n"
            f"Lambda-Extension-Identifier: {extension_id}\r\n\r\n"
        ).encode("latin-1")
        return extension_id

    def send_next(self) -> None:
        """Send ``event/next`` without reading any answer: from now on the environment may freeze.

        Any thread may send, also while the answer to the previous one (the INVOKE being
        served) is still unread: the API answers them in order, and ``read_event`` reads them
        in order.
        """
        if not self._next_request:
            raise ExtensionsApiError("event/next before register")
        self._send(self._next_request, f"GET {NEXT_EVENT_PATH}")

    def read_event(self, timeout: float | None = None) -> dict[str, Any]:
        """The next unread answer to ``send_next``: blocks until Lambda has sent it."""
        _, event = self._read_answer(f"GET {NEXT_EVENT_PATH}", timeout)
        if not isinstance(event, dict):
            raise ExtensionsApiError(f"event/next: expected a JSON object, got {event!r:.200}")
        return event
