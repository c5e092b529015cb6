"""Random ids: 32 hex digits, unique across threads and across forked processes."""

from __future__ import annotations

import os
import re
import threading

from shared import ids, tracing
from shared.ids import new_id

HEX_32 = re.compile(r"[0-9a-f]{32}")


def test_ids_are_32_hex_digits_and_never_repeat_across_refills() -> None:
    drawn = [new_id() for _ in range(1000)]  # many times the pool's batch
    assert all(HEX_32.fullmatch(value) for value in drawn)
    assert len(set(drawn)) == len(drawn)


def test_threads_drawing_at_once_never_share_an_id() -> None:
    drawn: list[list[str]] = [[] for _ in range(4)]

    def draw(into: list[str]) -> None:
        into.extend(new_id() for _ in range(2000))

    threads = [threading.Thread(target=draw, args=(into,)) for into in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [value for into in drawn for value in into]
    assert len(set(every)) == len(every) == 8000


def test_a_forked_child_does_not_hand_out_its_parents_pending_ids() -> None:
    new_id()  # the pool now holds ids a child would copy
    assert ids._pool
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first ids, sent to the parent
        os.close(read_end)
        os.write(write_end, "".join(new_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    child = {text[start : start + 32] for start in range(0, len(text), 32)}
    parent = {new_id() for _ in range(8)}
    assert len(child) == 8
    assert not child & parent


def test_a_new_trace_has_a_32_digit_trace_id_and_a_16_digit_span_id() -> None:
    traces = [tracing.new_trace() for _ in range(200)]
    assert all(HEX_32.fullmatch(trace.trace_id) and re.fullmatch(r"[0-9a-f]{16}", trace.span_id) for trace in traces)
    assert len({trace.trace_id for trace in traces}) == len({trace.span_id for trace in traces}) == 200
