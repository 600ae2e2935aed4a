"""One request as the handler sees it, and the one response it writes.

The handler gets raw values (target and header values as sent, decoded with
surrogateescape so every byte round-trips), the body as a flow-controlled stream, and a
response API that frames what it writes (`Content-Length`, chunked, or close-delimited
for HTTP/1.0). The connection underneath is `proxy.http.server`'s; a request needs only
the `Channel` of it.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from proxy.errors import ClientGoneError

BODY_HIGH_WATER = 512 * 1024  # unread request body that pauses reading the client
BODY_LOW_WATER = 128 * 1024


class Channel(Protocol):
    """What a request needs of the client connection it arrived on."""

    loop: asyncio.AbstractEventLoop
    peer: str
    scheme: str
    lost: bool

    @property
    def closing(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def response_done(self, request: Request) -> None: ...

    def run(self, request: Request, work: Awaitable[None]) -> None: ...

    def handler_failed(self, request: Request) -> None: ...

    def detach(self) -> tuple[asyncio.Transport, bytes]: ...

    def abort(self) -> None: ...


REASONS = {
    100: "Continue",
    101: "Switching Protocols",
    200: "OK",
    400: "Bad Request",
    405: "Method Not Allowed",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_NO_BODY_STATUSES = frozenset({204, 304})


class RequestHeaders:
    """The request's headers in arrival order, looked up case-insensitively."""

    __slots__ = ("_first", "items")

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self._first: dict[str, str] = {}

    def add(self, name: str, value: str) -> None:
        self.items.append((name, value))
        self._first.setdefault(name.lower(), value)

    def get(self, name: str, /) -> str | None:
        """The first value of `name`."""
        return self._first.get(name.lower())

    def getall(self, name: str) -> list[str]:
        lower = name.lower()
        return [v for n, v in self.items if n.lower() == lower]


class IncomingBody:
    """The request body as it arrives; reading it applies backpressure to the client."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_error",
        "_size",
        "_waiter",
        "complete",
        "expect_continue",
        "idle",
    )

    def __init__(self, conn: Channel, expect_continue: bool) -> None:
        self._conn = conn
        # The longest wait for the next byte (`timeouts.idle`), set by whoever reads:
        # a client that stops sending half way does not hold its request for ever.
        self.idle: float | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: Exception | None = None
        self.complete = False
        self.expect_continue = expect_continue

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size > BODY_HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def end(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, error: Exception) -> None:
        if not self.complete:
            self._error = error
            self._wake()

    def _silent(self) -> None:
        self.fail(ClientGoneError(f"no request body byte in {self.idle:g} s"))

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> bytes:
        """The next chunk; b"" at the end. Raises `ClientGoneError` if the client left."""
        if self.expect_continue:
            self.expect_continue = False
            self._conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not self._chunks:
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            loop = self._conn.loop
            waiter = self._waiter = loop.create_future()
            timer = None if self.idle is None else loop.call_later(self.idle, self._silent)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        if self._size < BODY_LOW_WATER:
            self._conn.resume_reading()
        return chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self.read():
            yield chunk


class Request:
    """One request, and the one response the handler writes for it."""

    __slots__ = (
        "_chunked",
        "_conn",
        "_remaining",
        "body",
        "content_length",
        "finished",
        "headers",
        "keep_alive",
        "method",
        "peer",
        "scheme",
        "started",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        conn: Channel,
        method: str,
        target: str,
        version: str,
        headers: RequestHeaders,
        keep_alive: bool,
        body: IncomingBody | None,
        content_length: int | None,
        upgrade: str | None = None,
    ) -> None:
        self._conn = conn
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.body = body
        self.content_length = content_length
        # An upgrade request (RFC 9110 7.8): its `Upgrade` value ("websocket"); "" when it
        # cannot be relayed (it has a body); None for every other request.
        self.upgrade = upgrade
        self.peer = conn.peer
        self.scheme = conn.scheme  # "http" or "https": how the client reached us
        self.started = False  # the response head has been written
        self.finished = False  # the whole response has been written
        self._chunked = False
        self._remaining: int | None = None

    def run(self, work: Awaitable[None]) -> None:
        """Finish this request in a task running `work` (a handler that began by callbacks
        and now has to wait: a streamed body, a fallback, a retry)."""
        self._conn.run(self, work)

    def failed(self) -> None:
        """An exception escaped the handler's callbacks: call from the `except` block."""
        self._conn.handler_failed(self)

    # --- the response ----------------------------------------------------------------

    def respond(
        self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> None:
        """A complete response in one write, framed by `Content-Length`."""
        length = None if status in _NO_BODY_STATUSES or status < 200 else len(body)
        head = self._head(status, reason, headers, length)
        self._conn.write(head if self.method == "HEAD" or length is None else head + body)
        self.started = self.finished = True
        self._conn.response_done(self)

    def respond_head(self, status: int, reason: str, head: bytes, body: bytes) -> None:
        """A complete response in one write, from a ready header block (`Name: value\r\n`
        lines) that frames `body` itself (its `Content-Length`)."""
        out = b"HTTP/1.1 %d %b\r\n%b" % (status, reason.encode("latin-1"), head)
        if not self.keep_alive or self._conn.closing:
            self.keep_alive = False
            out += b"Connection: close\r\n"
        elif self.version == "1.0":
            out += b"Connection: keep-alive\r\n"
        self._conn.write(out + b"\r\n" + body)
        self.started = self.finished = True
        self._conn.response_done(self)

    def respond_json(
        self, status: int, document: object, headers: list[tuple[str, str]] | None = None
    ) -> None:
        body = json.dumps(document).encode()
        out = [("Content-Type", "application/json; charset=utf-8"), *(headers or ())]
        self.respond(status, REASONS.get(status, ""), out, body)

    def start(
        self, status: int, reason: str, headers: list[tuple[str, str]], length: int | None
    ) -> None:
        """Write the head of a streamed response: `Content-Length` when `length` is known,
        else chunked (close-delimited for an HTTP/1.0 client)."""
        no_body = self.method == "HEAD" or status in _NO_BODY_STATUSES or status < 200
        if length is None and not no_body:
            if self.version == "1.1":
                self._chunked = True
            else:
                self.keep_alive = False
        self._remaining = 0 if no_body else length
        self._conn.write(self._head(status, reason, headers, length))
        self.started = True

    async def write(self, data: bytes) -> None:
        """Write part of the body; waits while the client is slow to read.

        Raises `ClientGoneError` once the client is gone.
        """
        conn = self._conn
        if conn.lost:
            raise ClientGoneError("the client closed the connection")
        if self._remaining is not None:
            if len(data) > self._remaining:
                data = data[: self._remaining]  # never more than the length announced
            self._remaining -= len(data)
        if not data:
            return
        conn.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        await conn.drain()

    def finish(self) -> None:
        """The body is complete. A response short of its `Content-Length` is aborted."""
        if self._remaining:
            self.abort()
            return
        if self._chunked:
            self._conn.write(b"0\r\n\r\n")
        self.finished = True
        self._conn.response_done(self)

    def switch_protocols(
        self, reason: str, headers: list[tuple[str, str]]
    ) -> tuple[asyncio.Transport, bytes]:
        """Answer `101` with `headers` (which carry `Connection` and `Upgrade`) and hand
        over the connection: its transport and the bytes the client sent after its head."""
        lines = [f"HTTP/1.1 101 {reason}"]
        lines.extend(f"{name}: {value}" for name, value in headers)
        self._conn.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape"))
        self.started = self.finished = True
        self.keep_alive = False
        return self._conn.detach()

    def abort(self) -> None:
        """Drop the connection: how HTTP tells the client its response is incomplete."""
        self.keep_alive = False
        self._conn.abort()

    def _head(
        self, status: int, reason: str, headers: list[tuple[str, str]], length: int | None
    ) -> bytes:
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines.extend(f"{name}: {value}" for name, value in headers)
        if self._chunked:
            lines.append("Transfer-Encoding: chunked")
        elif length is not None and status >= 200 and status != 204:
            lines.append(f"Content-Length: {length}")
        if not self.keep_alive or self._conn.closing:
            self.keep_alive = False
            lines.append("Connection: close")
        elif self.version == "1.0":
            lines.append("Connection: keep-alive")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


# The handler either returns the coroutine that answers the request (the server runs it
# in a task) or None: it has taken the request on by callbacks, and answers it, or hands
# the rest to `Request.run`, later.
Handler = Callable[[Request], Awaitable[None] | None]
