"""One request as the handler sees it, and the one response it writes.

The handler gets raw values (the target as sent, decoded with surrogateescape so every
byte round-trips; the headers as the bytes received, decoded only when asked for), the
body as a flow-controlled stream, and a response API that frames what it writes
(`Content-Length`, chunked, or close-delimited for HTTP/1.0). The connection underneath
is `proxy.http.server`'s; a request needs only the `Channel` of it.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
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

# Status lines ready as bytes, with the reason each is usually sent with: a relayed answer
# whose status and reason are in here is not formatted per response (bench/RESULTS.md,
# issue 19). Any other reason is formatted, so the upstream's own reason goes on as sent.
_STATUS_LINES: dict[int, tuple[str, bytes]] = {
    status: (reason, b"HTTP/1.1 %d %b\r\n" % (status, reason.encode("latin-1")))
    for status, reason in {**{s.value: s.phrase for s in HTTPStatus}, **REASONS}.items()
}


class RequestHeaders:
    """The request's headers in arrival order, looked up case-insensitively.

    Kept as the raw byte pairs llhttp hands over: the upstream head is joined from them
    with no decoding and re-encoding, and a value goes on byte for byte (bench/RESULTS.md,
    issue 19). Only what a str user asks for (`get`, `getall`, `items`: routing's session
    lookup, the Cookie header) is decoded, UTF-8 with surrogateescape so bytes round-trip.
    The lowercased names are made once, on the first lookup (the head is complete by
    then), for every later one and for `request_head`.
    """

    __slots__ = ("_lowered", "raw")

    def __init__(self) -> None:
        self.raw: list[tuple[bytes, bytes]] = []
        self._lowered: list[bytes] | None = None

    def add(self, name: bytes, value: bytes) -> None:
        """One more header, before any lookup."""
        self.raw.append((name, value))

    @property
    def lowered(self) -> list[bytes]:
        """Each header's name in lower case, in the order of `raw`."""
        lowered = self._lowered
        if lowered is None:
            lowered = self._lowered = [name.lower() for name, _ in self.raw]
        return lowered

    def get_raw(self, lower: bytes, /) -> bytes | None:
        """The first value of the header named `lower` (in lower case), as bytes."""
        # A list searched in C: for the dozen headers of a request, cheaper than a dict
        # that would have to be built first.
        lowered = self._lowered or self.lowered
        return self.raw[lowered.index(lower)][1] if lower in lowered else None

    def getall_raw(self, lower: bytes) -> list[bytes]:
        """Every value of the header named `lower` (in lower case), as bytes."""
        return [v for n, (_, v) in zip(self.lowered, self.raw, strict=True) if n == lower]

    def get(self, name: str, /) -> str | None:
        """The first value of `name`."""
        lower = name.lower().encode("latin-1", "replace")
        lowered = self._lowered or self.lowered
        if lower not in lowered:
            return None
        return self.raw[lowered.index(lower)][1].decode("utf-8", "surrogateescape")

    def getall(self, name: str) -> list[str]:
        lower = name.lower().encode("latin-1", "replace")
        return [v.decode("utf-8", "surrogateescape") for v in self.getall_raw(lower)]

    @property
    def items(self) -> list[tuple[str, str]]:
        """(name, value) pairs as str: names latin-1, values surrogateescape."""
        return [(n.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for n, v in self.raw]


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
        known = _STATUS_LINES.get(status)
        if known is not None and known[0] == reason:
            line = known[1]
        else:
            line = b"HTTP/1.1 %d %b\r\n" % (status, reason.encode("latin-1"))
        if not self.keep_alive or self._conn.closing:
            self.keep_alive = False
            end = b"Connection: close\r\n\r\n"
        elif self.version == "1.0":
            end = b"Connection: keep-alive\r\n\r\n"
        else:
            end = b"\r\n"
        self._conn.write(b"".join((line, head, end, body)))
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
