"""The Extensions API client: ``event/next`` pipelined on one connection, answers read in order."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from infra.runtime_api import RuntimeApiEmulator, runtime_takes_an_invocation
from shared.background.extensions_api import ExtensionsApiClient


def test_event_next_ends_an_invocation_before_anyone_read_its_invoke() -> None:
    with RuntimeApiEmulator() as api:
        client = ExtensionsApiClient(api.address)
        client.register("pipelined", ["INVOKE"])
        client.send_next()
        first = api.submit({"n": 1})
        runtime_takes_an_invocation(api).join(10)
        first.wait_response(10)

        client.send_next()  # the answer to the previous event/next (INVOKE 1) is still unread
        first.wait_free(10)

        assert client.read_event()["requestId"] == first.request_id
        second = api.submit({"n": 2})
        runtime_takes_an_invocation(api).join(10)
        assert client.read_event()["requestId"] == second.request_id
        assert len(api.extension_next_ports) == 2
        assert len(set(api.extension_next_ports)) == 1


@contextmanager
def one_answer_per_connection(answer: bytes) -> Iterator[tuple[str, list[bytes]]]:
    """A server on 127.0.0.1 that reads one request per connection, sends ``answer`` and closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    requests: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += connection.recv(4096)
                head, _, body = request.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                while len(body) < length:
                    body += connection.recv(4096)
                requests.append(head)
                connection.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}", requests
    finally:
        listener.close()


def test_chunked_answers_and_a_closed_connection_are_followed() -> None:
    event = json.dumps({"eventType": "INVOKE", "requestId": "r-1"}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (event[:10], event[10:])) + b"0\r\n\r\n"
    answer = (
        b"HTTP/1.1 200 OK\r\nLambda-Extension-Identifier: ext-1\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + chunks
    )
    with one_answer_per_connection(answer) as (address, requests):
        client = ExtensionsApiClient(address)
        assert client.register("chunked", ["INVOKE"]) == "ext-1"
        client.send_next()  # on a new connection: the API closed the first one
        assert client.read_event() == {"eventType": "INVOKE", "requestId": "r-1"}

    assert requests[0].startswith(b"POST /2020-01-01/extension/register ")
    assert requests[1].startswith(b"GET /2020-01-01/extension/event/next ")
    assert b"Lambda-Extension-Identifier: ext-1" in requests[1]
