"""The Lambda Extensions API, as an internal extension calls it: register, then ``event/next``.

Plain ``http.client`` (no SDK offers this API): one connection kept alive between calls,
since a new TCP connection per ``event/next`` would sit between the response and the
moment the environment is free (billed).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Sequence
from typing import Any

REGISTER_PATH = "/2020-01-01/extension/register"
NEXT_EVENT_PATH = "/2020-01-01/extension/event/next"
REGISTER_TIMEOUT_S = 5.0
"""Registration answers at once; a hang here would eat the 10 s init budget."""


class ExtensionsApiError(Exception):
    """The Extensions API refused a call or could not be reached."""


class ExtensionsApiClient:
    """The two calls an internal extension makes, over stdlib ``http.client``.

    One connection, kept alive between calls: a new TCP connection per ``event/next``
    would sit between the response and the moment the environment is free (billed).
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        connection = self._connection
        if connection is None:
            host, _, port = self.address.partition(":")
            connection = self._connection = http.client.HTTPConnection(host, int(port or 80))
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        return connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _call(self, method: str, path: str, headers: dict[str, str], body: bytes | None, timeout: float | None) -> Any:
        reused = self._connection is not None
        try:
            connection = self._connect(timeout)
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
            self.close()
            if reused:  # the API closed the kept-alive connection meanwhile: once more, on a new one
                return self._call(method, path, headers, body, timeout)
            raise ExtensionsApiError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ExtensionsApiError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        return response, self._answer(response, payload, f"{method} {path}")

    def _answer(self, response: http.client.HTTPResponse, payload: bytes, call: str) -> Any:
        """The JSON of a 200 answer; anything else is an ``ExtensionsApiError`` naming ``call``."""
        if response.will_close:
            self.close()
        if response.status != 200:
            raise ExtensionsApiError(f"{call}: HTTP {response.status} {payload[:500]!r}")
        try:
            return json.loads(payload or b"{}")
        except ValueError as exc:
            raise ExtensionsApiError(f"{call}: {type(exc).__name__}: {exc}") from exc

    def register(self, name: str, events: Sequence[str]) -> str:
        response, _ = self._call(
            "POST",
            REGISTER_PATH,
            {"Lambda-Extension-Name": name, "Content-Type": "application/json"},
            json.dumps({"events": list(events)}).encode(),
            REGISTER_TIMEOUT_S,
        )
        extension_id = response.getheader("Lambda-Extension-Identifier")
        if not extension_id:
            raise ExtensionsApiError("register: no Lambda-Extension-Identifier in the answer")
        return str(extension_id)

    def next_event(self, extension_id: str) -> dict[str, Any]:
        """Blocks until Lambda has an event for us: while idle, the environment is frozen in here."""
        self.ask_next(extension_id)
        return self.read_event()

    def ask_next(self, extension_id: str) -> None:
        """Send ``event/next`` without waiting for the answer (``read_event``): the environment may freeze now.

        Any thread may ask; the extension thread alone reads.
        """
        headers = {"Lambda-Extension-Identifier": extension_id}
        reused = self._connection is not None
        try:
            self._connect(None).request("GET", NEXT_EVENT_PATH, headers=headers)
        except (BrokenPipeError, ConnectionResetError) as exc:
            self.close()
            if not reused:
                raise ExtensionsApiError(f"GET {NEXT_EVENT_PATH}: {type(exc).__name__}: {exc}") from exc
            self.ask_next(extension_id)  # the API closed the kept-alive connection: on a new one
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ExtensionsApiError(f"GET {NEXT_EVENT_PATH}: {type(exc).__name__}: {exc}") from exc

    def read_event(self) -> dict[str, Any]:
        """The answer to ``ask_next``: blocks until Lambda has an event for us."""
        connection = self._connection
        if connection is None:
            raise ExtensionsApiError("event/next: no request was sent")
        try:
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ExtensionsApiError(f"GET {NEXT_EVENT_PATH}: {type(exc).__name__}: {exc}") from exc
        event = self._answer(response, payload, f"GET {NEXT_EVENT_PATH}")
        if not isinstance(event, dict):
            raise ExtensionsApiError(f"event/next: expected a JSON object, got {event!r:.200}")
        return event
