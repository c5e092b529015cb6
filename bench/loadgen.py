"""A keep-alive HTTP/1.1 load generator, run as its own process: ``python -m bench.loadgen``.

Each of ``--connections`` connections sends one request, reads the whole response and
sends the next (closed loop), for ``--duration`` seconds after ``--warmup`` seconds.
Raw asyncio sockets rather than an HTTP client library, so the generator costs little
CPU next to the server it measures. Prints one JSON object: count, elapsed, errors and
every latency in milliseconds; ``total`` also counts the warm-up's responses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field


@dataclass
class Tally:
    measuring: bool = False
    stopping: bool = False
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    total: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response (Content-Length framed, as uvicorn sends JSON); return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def connection(host: str, port: int, request: bytes, tally: Tally) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while not tally.stopping:
            started = time.perf_counter()
            writer.write(request)
            status = await read_response(reader)
            elapsed_ms = (time.perf_counter() - started) * 1000
            tally.total += 1
            if tally.measuring:
                tally.statuses[status] = tally.statuses.get(status, 0) + 1
                if 200 <= status < 300:
                    tally.latencies_ms.append(elapsed_ms)
                else:
                    tally.errors += 1
    finally:
        writer.close()


async def run(host: str, port: int, path: str, connections: int, warmup: float, duration: float) -> dict[str, object]:
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 0\r\nUser-Agent: bench\r\n\r\n"
    ).encode()
    tally = Tally()
    workers = [asyncio.create_task(connection(host, port, request, tally)) for _ in range(connections)]
    await asyncio.sleep(warmup)
    tally.measuring = True
    started = time.perf_counter()
    await asyncio.sleep(duration)
    tally.measuring = False
    elapsed = time.perf_counter() - started
    tally.stopping = True
    results = await asyncio.gather(*workers, return_exceptions=True)
    failures = [repr(result) for result in results if isinstance(result, BaseException)]
    return {
        "count": len(tally.latencies_ms),
        "total": tally.total,
        "elapsed": elapsed,
        "errors": tally.errors + len(failures),
        "failures": failures[:3],
        "statuses": tally.statuses,
        "latencies_ms": [round(value, 4) for value in tally.latencies_ms],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.host, args.port, args.path, args.connections, args.warmup, args.duration))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
