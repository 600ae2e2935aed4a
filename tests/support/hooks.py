"""A webhook receiver: a real aiohttp server on 127.0.0.1 in a thread of its own.

Webhooks are posted by blocking code (a background thread, or a synchronous confirm), so
the receiver cannot share the test's event loop; it runs its own loop in a thread and
records every POST. `statuses` are answered in turn, then `status`; with `hold()` the
handler keeps each request unanswered until `release()`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Hooked:
    path_qs: str
    headers: dict[str, str]
    payload: Any


class HookServer:
    def __init__(self, statuses: Sequence[int] = (), *, status: int = 200) -> None:
        self._plan = list(statuses)
        self.status = status
        self.received: list[Hooked] = []
        self._seen = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._held = False
        self._gate: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    def url(self, path: str = "/hook/T0KEN-secret?sig=abc") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def hold(self) -> None:
        """Leave every request from now on unanswered until `release()`."""
        self._held = True
        self._call(self._new_gate)

    def release(self) -> None:
        self._held = False
        self._call(self._open_gate)

    def wait_for(self, count: int, timeout: float = 30.0) -> bool:
        """True once `count` requests have arrived (their handlers may still be held)."""
        with self._seen:
            return self._seen.wait_for(lambda: len(self.received) >= count, timeout)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)

    def stop(self) -> None:
        self.release()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    def _call(self, func: Any) -> None:
        async def run() -> None:
            func()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    def _new_gate(self) -> None:
        self._gate = asyncio.Event()

    def _open_gate(self) -> None:
        if self._gate is not None:
            self._gate.set()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind((HOST, 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._seen:
            self.received.append(
                Hooked(request.path_qs, dict(request.headers), json.loads(body or b"null"))
            )
            self._seen.notify_all()
        gate = self._gate
        if self._held and gate is not None:
            await gate.wait()
        status = self._plan.pop(0) if self._plan else self.status
        return web.Response(status=status, text="ok")


@contextmanager
def hook_server(statuses: Sequence[int] = (), *, status: int = 200) -> Iterator[HookServer]:
    server = HookServer(statuses, status=status)
    server.start()
    try:
        yield server
    finally:
        server.stop()
