"""Test support for wire-level protocol tests: a fake transport that records bytes.

After uvicorn's `tests/protocols/test_http.py` (`MockTransport`, `get_connected_protocol`):
a protocol under test is handed a `MockTransport` through `connection_made`, bytes are
fed with `data_received`, and the test asserts the bytes the protocol wrote and what it
did to the transport (close, abort, pause/resume reading). No socket, no subprocess.

`settle()` drives the running loop a bounded number of iterations until a condition
holds: tasks the protocol started get to run without any wall-clock sleep.

Proxy-agnostic on purpose: nothing here imports the modules under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class MockTransport(asyncio.Transport):
    """Records writes and what was done to the connection; never touches a socket."""

    def __init__(self, peername: tuple[str, int] | None = ("127.0.0.1", 54321)) -> None:
        super().__init__()
        self.buffer = bytearray()
        self.writes: list[bytes] = []
        self.written_after_close = bytearray()
        self.closed = False
        self.aborted = False
        self.reading_paused = False
        self.pause_count = 0
        self.resume_count = 0
        self.eof_written = False
        self.half_close = True  # can_write_eof(): False as for a TLS transport
        self.protocol: asyncio.BaseProtocol | None = None
        self._peername = peername

    # --- what the protocol calls ------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peername
        return default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        chunk = bytes(data)
        if self.closed or self.aborted:
            self.written_after_close += chunk
            return
        self.buffer += chunk
        self.writes.append(chunk)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading_paused = True
        self.pause_count += 1

    def resume_reading(self) -> None:
        self.reading_paused = False
        self.resume_count += 1

    def is_reading(self) -> bool:
        return not self.reading_paused

    def can_write_eof(self) -> bool:
        return self.half_close

    def write_eof(self) -> None:
        self.eof_written = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    # --- for assertions ----------------------------------------------------------------

    @property
    def written(self) -> bytes:
        return bytes(self.buffer)

    def take(self) -> bytes:
        """The bytes written since the last `take()`."""
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


def connect(protocol: asyncio.Protocol, transport: MockTransport | None = None) -> MockTransport:
    """`connection_made` with a fresh (or the given) `MockTransport`; returns it."""
    transport = transport if transport is not None else MockTransport()
    transport.protocol = protocol
    protocol.connection_made(transport)
    return transport


async def settle(condition: Callable[[], bool] | None = None, *, rounds: int = 50) -> None:
    """Run the loop until `condition()` holds (bounded), or `rounds` iterations without one.

    Never a wall-clock sleep: `asyncio.sleep(0)` yields one loop iteration at a time. A
    condition still false after `rounds` iterations fails the test.
    """
    for _ in range(rounds):
        if condition is not None and condition():
            return
        await asyncio.sleep(0)
    if condition is not None and not condition():
        raise AssertionError(f"condition not met after {rounds} loop iterations")


__all__ = ["MockTransport", "connect", "settle"]
