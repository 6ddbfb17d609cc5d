"""What a sandboxed run produced, gathered the same way whichever way it ran: capped output and side-channel events."""

from __future__ import annotations

import json
import os
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

REPORT_BYTES = 16 * 1024  # most the parent reads from the side channel


@dataclass
class Outcome:
    """The raw end of one run: exit status (negative: signal), why we stopped it early, output, events, CPU."""

    returncode: int
    early: str | None
    stdout: bytes
    stderr: bytes
    events: list[dict[str, Any]] = field(default_factory=list)
    cpu_s: float = 0.0
    cpu_known: bool = True  # False when a killed child's CPU time could not be measured


def collect(
    out_fd: int, err_fd: int, exited: Callable[[], bool], output_bytes: int, deadline: float
) -> tuple[bytes, bytes, str | None]:
    """Read both pipes until EOF, the deadline or the output cap; return (stdout, stderr, reason we stopped early)."""
    bufs = {out_fd: bytearray(), err_fd: bytearray()}

    def done(reason: str | None) -> tuple[bytes, bytes, str | None]:
        return bytes(bufs[out_fd]), bytes(bufs[err_fd]), reason

    with selectors.DefaultSelector() as sel:
        for fd in bufs:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return done("timeout")
            for key, _ in sel.select(min(left, 0.5)):
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.fd]
                buf += chunk
                if len(buf) > output_bytes:
                    del buf[output_bytes:]
                    return done("output_limit")
    # Both pipes closed; the process may still run (it can close its own stdout): wait for the rest of the time.
    while not exited():
        if time.monotonic() >= deadline:
            return done("timeout")
        time.sleep(0.005)
    return done(None)


def read_events(fd: int) -> list[dict[str, Any]]:
    """The child's side-channel records (at most REPORT_BYTES; whatever is not JSON is ignored)."""
    data = bytearray()
    os.set_blocking(fd, False)
    while len(data) < REPORT_BYTES:
        try:
            chunk = os.read(fd, REPORT_BYTES - len(data))
        except (BlockingIOError, InterruptedError):
            break
        if not chunk:
            break
        data += chunk
    events = []
    for line in bytes(data).decode("utf-8", "replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("event"), str):
            events.append(event)
    return events


def reported_cpu(events: list[dict[str, Any]]) -> list[float]:
    """CPU seconds the child reported at its exit (empty when it did not get there)."""
    return [c for e in events if e["event"] == "exit" and isinstance(c := e.get("cpu_s"), (int, float))]
