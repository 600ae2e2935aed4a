"""The public accept loop (proxy/http/listener.py), on both event loops `rollout serve` offers.

Each test runs its own loop: the standard one and uvloop, whose own servers accept one
connection per loop iteration (the 1-5 s stalls at 500 connections this module removes).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, cast

import pytest
import uvloop

from proxy.http import listener
from proxy.http.listener import Listener, open_sockets

LOOPS = pytest.mark.parametrize(
    "loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def run(loop_factory: LoopFactory, coro: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(coro)


class Recorder:
    """A protocol factory that remembers every transport handed to its protocols."""

    def __init__(self) -> None:
        self.made: list[asyncio.BaseTransport] = []

    def factory(self) -> asyncio.Protocol:
        recorder = self

        class One(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                recorder.made.append(transport)

        return One()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.made) < count:
                await asyncio.sleep(0.01)


@contextlib.contextmanager
def queued_clients(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections completed by the kernel and waiting in the accept queue."""
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    try:
        yield clients
    finally:
        for client in clients:
            client.close()


@LOOPS
def test_one_readiness_accepts_every_queued_connection(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        sockets = open_sockets("127.0.0.1", 0, reuse_port=False)
        recorder = Recorder()
        server = Listener(asyncio.get_running_loop(), sockets, recorder.factory)
        port = sockets[0].getsockname()[1]
        with queued_clients(port, 60) as clients:
            server.accept_waiting(sockets[0])
            with pytest.raises(BlockingIOError):
                sockets[0].accept()  # nothing left in the queue after that one call
            await recorder.wait_for(60)
            peers = {t.get_extra_info("peername") for t in recorder.made}
            assert peers == {c.getsockname() for c in clients}
            for transport in recorder.made:
                transport.close()
        server.close()

    run(loop_factory, main())


@LOOPS
def test_one_readiness_takes_at_most_a_batch(
    loop_factory: LoopFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listener, "ACCEPT_BATCH", 10)

    async def main() -> None:
        sockets = open_sockets("127.0.0.1", 0, reuse_port=False)
        recorder = Recorder()
        server = Listener(asyncio.get_running_loop(), sockets, recorder.factory)
        with queued_clients(sockets[0].getsockname()[1], 25):
            server.accept_waiting(sockets[0])
            await recorder.wait_for(10)
            left, _ = sockets[0].accept()  # the other 15 wait for the next readiness
            left.close()
            server.start()  # the reader takes the remaining 14
            await recorder.wait_for(24)
            assert len(recorder.made) == 24
            for transport in recorder.made:
                transport.close()
        server.close()

    run(loop_factory, main())


@LOOPS
def test_closed_listener_refuses_connections(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        sockets = open_sockets("127.0.0.1", 0, reuse_port=False)
        port = sockets[0].getsockname()[1]
        server = Listener(asyncio.get_running_loop(), sockets, Recorder().factory)
        server.start()
        server.close()
        server.close()  # twice is harmless
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10).close()

    run(loop_factory, main())


class Exhausted:
    """A listening socket whose accept() fails as when the process has no descriptor left."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.attempts: list[float] = []

    def fileno(self) -> int:
        return self.real.fileno()

    def close(self) -> None:
        self.real.close()

    def accept(self) -> tuple[socket.socket, Any]:
        self.attempts.append(time.monotonic())
        raise OSError(errno.EMFILE, "Too many open files")


@LOOPS
def test_out_of_descriptors_pauses_accepting_instead_of_spinning(
    loop_factory: LoopFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(listener, "PAUSE_SECONDS", 0.2)

    async def main() -> None:
        real = open_sockets("127.0.0.1", 0, reuse_port=False)[0]
        exhausted = Exhausted(real)
        sockets = [cast(socket.socket, exhausted)]
        server = Listener(asyncio.get_running_loop(), sockets, Recorder().factory)
        server.start()
        with queued_clients(real.getsockname()[1], 1):  # readable until accepted: never
            async with asyncio.timeout(10):
                while len(exhausted.attempts) < 3:
                    await asyncio.sleep(0.01)
        server.close()
        first, second, third = exhausted.attempts[:3]
        # Spinning would retry within microseconds; a load can only stretch the pauses (the
        # margin is for uvloop's timers, which count from the start of a loop iteration).
        assert second - first >= 0.15
        assert third - second >= 0.15

    with caplog.at_level(logging.WARNING, logger="rollout.listener"):
        run(loop_factory, main())
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings[0] == "cannot accept: [Errno 24] Too many open files; pausing 0.2 s"
    assert len(warnings) == 1  # rate-limited while it lasts


def test_a_port_in_use_is_named_in_the_error() -> None:
    taken = open_sockets("127.0.0.1", 0, reuse_port=False)
    port = taken[0].getsockname()[1]
    try:
        with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{port}: address already in use"):
            open_sockets("127.0.0.1", port, reuse_port=False)
    finally:
        taken[0].close()


def test_reuse_port_lets_two_processes_share_the_port() -> None:
    first = open_sockets("127.0.0.1", 0, reuse_port=True)
    port = first[0].getsockname()[1]
    second = open_sockets("127.0.0.1", port, reuse_port=True)
    try:
        assert second[0].getsockname() == ("127.0.0.1", port)
    finally:
        for sock in first + second:
            sock.close()
