"""WebSocket test parts: `websockets` servers as signal and legacy, clients through the proxy.

An upstream tags every reply with its side (`signal:hello`), records each connection it
accepted (session id, path, the close code it received) and obeys a few commands sent as
text messages:
- `!close CODE REASON`: it closes the connection with that code and reason;
- `!fragments`: it answers with a message sent in four fragments;
- `!ping`: it pings the client, waits for the pong, then answers `SIDE:pong`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from proxy.rollout.routing import bucket
from tests.support import HOST, ProxyProcess

# Bounds, not timings: a loaded 2-core machine may be slow, a hung one must still fail.
WAIT = 20.0
MAX_MESSAGE = 8 * 1024 * 1024

# Which handshakes an upstream refuses: path -> HTTP status, or None to accept.
Refusal = Callable[[str], int | None]


@dataclass
class Peer:
    """One connection an upstream accepted."""

    session: str | None
    path: str
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None
    close_reason: str | None = None


@dataclass
class WsUpstream:
    """A running `websockets` server playing one side."""

    side: str
    port: int
    peers: list[Peer] = field(default_factory=list)
    handshakes: int = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def peers_of(self, session: str) -> list[Peer]:
        return [p for p in self.peers if p.session == session]

    def open_peers(self) -> list[Peer]:
        return [p for p in self.peers if not p.closed.is_set()]


def tagged(side: str, message: str | bytes) -> str | bytes:
    if isinstance(message, bytes):
        return side.encode() + b":" + message
    return f"{side}:{message}"


async def _serve_one(upstream: WsUpstream, ws: ServerConnection) -> None:
    side = upstream.side
    request = ws.request
    assert request is not None
    peer = Peer(request.headers.get("X-Session-Id"), request.path)
    upstream.peers.append(peer)
    try:
        async for message in ws:
            if isinstance(message, str) and message.startswith("!close "):
                _, code, reason = message.split(" ", 2)
                await ws.close(int(code), reason)
                break
            if message == "!fragments":
                await ws.send([f"{side}:", "one-", "two-", "three"])
            elif message == "!ping":
                pong = await ws.ping(b"from-upstream")
                await asyncio.wait_for(pong, WAIT)
                await ws.send(f"{side}:pong")
            else:
                await ws.send(tagged(side, message))
    except ConnectionClosed:
        pass
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ws.wait_closed(), WAIT)
        peer.close_code, peer.close_reason = ws.close_code, ws.close_reason
        peer.closed.set()


@contextlib.asynccontextmanager
async def websocket_upstream(side: str, refuse: Refusal | None = None) -> AsyncIterator[WsUpstream]:
    """A `websockets` echo server on a free 127.0.0.1 port, closed on exit."""
    upstream = WsUpstream(side, 0)

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        upstream.handshakes += 1
        status = refuse(request.path) if refuse is not None else None
        if status is None:
            return None
        return connection.respond(HTTPStatus(status), f"{side} refuses\n")

    async def handler(ws: ServerConnection) -> None:
        await _serve_one(upstream, ws)

    async with serve(
        handler,
        HOST,
        0,
        process_request=process_request,
        ping_interval=None,  # no keepalive of its own: idle tests need silence
        max_size=MAX_MESSAGE,
    ) as server:
        upstream.port = server.sockets[0].getsockname()[1]
        yield upstream


def ws_url(proxy: ProxyProcess, path: str = "/ws") -> str:
    return f"ws://{HOST}:{proxy.port}{path}"


@contextlib.asynccontextmanager
async def ws_clients(proxy: ProxyProcess) -> AsyncIterator[Callable[..., Any]]:
    """`open(session=None, path="/ws", cookie=None, **kwargs)` connects through the proxy;
    every connection opened is closed on exit."""
    opened: list[ClientConnection] = []

    async def open_ws(
        session: str | None = None,
        path: str = "/ws",
        cookie: str | None = None,
        **kwargs: Any,
    ) -> ClientConnection:
        headers: dict[str, str] = {}
        if session is not None:
            headers["X-Session-Id"] = session
        if cookie is not None:
            headers["Cookie"] = cookie
        options: dict[str, Any] = {
            "ping_interval": None,  # the client keeps nothing alive by itself
            "max_size": MAX_MESSAGE,
            "open_timeout": WAIT,
            "close_timeout": 5,
        }
        ws = await connect(ws_url(proxy, path), additional_headers=headers, **{**options, **kwargs})
        opened.append(ws)
        return ws

    try:
        yield open_ws
    finally:
        await asyncio.wait_for(
            asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True), WAIT
        )


async def echo(ws: ClientConnection, message: str | bytes) -> str | bytes:
    await ws.send(message)
    return await asyncio.wait_for(ws.recv(), WAIT)


async def closed_with(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Wait (bounded) until `ws` is closed; the close code and reason it received."""
    await asyncio.wait_for(ws.wait_closed(), WAIT)
    return ws.close_code, ws.close_reason


def side_of(ws: ClientConnection) -> str | None:
    """X-Rollout-Upstream of the 101 that opened `ws`."""
    assert ws.response is not None
    return ws.response.headers.get("X-Rollout-Upstream")


def sessions_in(
    low: int, high: int, count: int, *, prefix: str, seed: str = "rollout"
) -> list[str]:
    """The first `count` ids `PREFIX-N` whose bucket is within [low, high)."""
    found: list[str] = []
    for n in range(200_000):
        sid = f"{prefix}-{n}"
        if low <= bucket(sid, seed) < high:
            found.append(sid)
            if len(found) == count:
                return found
    raise AssertionError(f"fewer than {count} ids in buckets [{low}, {high})")


def expected_side(session: str, percentage: float, seed: str = "rollout") -> str:
    return "signal" if bucket(session, seed) < round(percentage * 100) else "legacy"


# --- a client that does not answer: it reads frames by hand ----------------------------


@dataclass
class RawWebSocket:
    """A handshake done by hand; the connection then only reads, never answers."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int

    async def read_close(self) -> tuple[int, str]:
        """Frames until a close frame (bounded): its code and reason."""
        async with asyncio.timeout(WAIT):
            for _ in range(1000):
                first, second = await self.reader.readexactly(2)
                size = second & 0x7F
                if size == 126:
                    size = int.from_bytes(await self.reader.readexactly(2), "big")
                elif size == 127:
                    size = int.from_bytes(await self.reader.readexactly(8), "big")
                payload = await self.reader.readexactly(size)
                if first & 0x0F == 0x8:
                    return int.from_bytes(payload[:2], "big"), payload[2:].decode()
        raise AssertionError("no close frame in 1000 frames")

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def raw_websocket(port: int, session: str, path: str = "/ws") -> RawWebSocket:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), WAIT)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nX-Session-Id: {session}\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    return RawWebSocket(reader, writer, int(head.split()[1]))
