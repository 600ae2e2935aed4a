"""One attempt against one upstream: headers in and out, bodies, and error translation.

The proxy never follows redirects, never decompresses, never invents headers, and builds
the request from the configured upstream plus the client's raw target, so the request
line or `Host` can never point it elsewhere.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httptools

from proxy.config.values import Upstream
from proxy.errors import (
    UpstreamError,
    UpstreamResetError,
    UpstreamTimeoutError,
)
from proxy.http.client import Pool, UpstreamResponse, build_head
from proxy.http.server import IncomingBody, Request

# RFC 9110 section 7.6.1, plus the legacy Keep-Alive / Proxy-Connection.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)

# Request headers the proxy replaces or answers itself: `Expect: 100-continue` was
# answered by our server when the body was read; framing headers are set for the body
# actually sent; the forwarding headers are rebuilt.
_REPLACED = frozenset(
    {"host", "expect", "content-length", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
)

# The response framing is the server's to write, for the body it actually sends.
_FRAMING = frozenset({"content-length"})

_REQUEST_DROPPED = HOP_BY_HOP | _REPLACED
_RESPONSE_DROPPED = HOP_BY_HOP | _FRAMING

# Methods whose empty body is still announced with `Content-Length: 0` (RFC 9110 8.6).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


_HOP_BY_HOP_LINES = re.compile(
    rb"^(?:" + b"|".join(name.encode() for name in sorted(HOP_BY_HOP)) + rb"):[^\n]*\n",
    re.IGNORECASE | re.MULTILINE,
)
_CONNECTION_VALUES = re.compile(rb"^connection:([^\r]*)\r$", re.IGNORECASE | re.MULTILINE)


def forwardable_head(head: bytes) -> bytes | None:
    """An upstream header block minus its hop-by-hop lines, as bytes; None when its
    `Connection` header names other headers (then `client_response_headers` filters).

    The fast path of the relay: one regex pass instead of a parsed list, for a block that
    llhttp has already validated (`Name: value\r\n` lines, no folding).
    """
    for match in _CONNECTION_VALUES.finditer(head):
        names = {token.strip().lower() for token in match[1].decode("latin-1").split(",")}
        if not names <= _CONNECTION_ONLY_TOKENS:
            return None
    return _HOP_BY_HOP_LINES.sub(b"", head)


# `Connection` values that name no end-to-end header.
_CONNECTION_ONLY_TOKENS = HOP_BY_HOP | {"close", ""}


def _connection_tokens(values: Iterable[str]) -> set[str]:
    """The header names a `Connection` header lists: hop-by-hop too (RFC 9110 7.6.1)."""
    return {token.strip().lower() for value in values for token in value.split(",")} - {""}


@dataclass(slots=True)
class RequestBody:
    """The client's body: whole in memory when small enough to replay, else a stream."""

    data: bytes | None
    prefix: list[bytes]
    stream: IncomingBody | None
    length: int | None  # declared Content-Length of a streamed body

    @property
    def buffered(self) -> bool:
        return self.stream is None

    def payload(self) -> bytes | AsyncIterator[bytes] | None:
        """What to send; a fresh iterator per attempt (only unconsumed streams are replayed)."""
        if self.stream is None:
            return self.data
        return self._iterate(self.stream)

    async def _iterate(self, stream: IncomingBody) -> AsyncIterator[bytes]:
        for chunk in self.prefix:
            yield chunk
        async for chunk in stream:
            yield chunk


NO_BODY = RequestBody(None, [], None, None)


async def read_body(request: Request, max_buffered: int) -> RequestBody:
    """Buffer up to `max_buffered` bytes so the request can be replayed; stream beyond.

    Raises `ClientGoneError` if the client leaves before its body is in.
    """
    stream = request.body
    if stream is None:
        return NO_BODY
    length = request.content_length
    if length is not None and length > max_buffered:
        return RequestBody(None, [], stream, length)
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read():
        chunks.append(chunk)
        size += len(chunk)
        if size > max_buffered:
            return RequestBody(None, chunks, stream, length)
    return RequestBody(b"".join(chunks), [], None, None)


def request_head(
    request: Request,
    upstream: Upstream,
    body: RequestBody,
    extra: dict[str, str] | None = None,
) -> tuple[bytes, bool]:
    """The request line and headers for the upstream (SPEC 4), and whether to chunk."""
    incoming = request.headers
    dropped = _REQUEST_DROPPED
    if incoming.get("Connection") is not None:
        dropped = dropped | _connection_tokens(incoming.getall("Connection"))
    out = [(name, value) for name, value in incoming.items if name.lower() not in dropped]
    if extra:
        out = [(name, value) for name, value in out if name not in extra]
    peer = request.peer
    prior = incoming.get("X-Forwarded-For") and ", ".join(incoming.getall("X-Forwarded-For"))
    out.append(("X-Forwarded-For", f"{prior}, {peer}" if prior else peer))
    out.append(("X-Forwarded-Proto", "http"))
    host = incoming.get("Host")
    if host:
        out.append(("X-Forwarded-Host", host))
    out.append(("Host", upstream.authority))
    if extra:
        out.extend(extra.items())

    chunked = False
    if body.stream is not None:
        if body.length is not None:
            framing: str | None = f"Content-Length: {body.length}"
        else:
            framing, chunked = "Transfer-Encoding: chunked", True
    elif body.data:
        framing = f"Content-Length: {len(body.data)}"
    elif request.method in _BODY_METHODS or body.data is not None:
        framing = "Content-Length: 0"
    else:
        framing = None
    return build_head(request.method, upstream_target(request), out, framing), chunked


def upstream_target(request: Request) -> str:
    """The client's path and query, byte for byte."""
    target = request.target
    if not target.startswith("/") and target != "*":
        # Absolute-form request line (`GET http://other.host/x`): keep only path and
        # query; the host part is never used.
        url = httptools.parse_url(target.encode("utf-8", "surrogateescape"))
        path = (url.path or b"/").decode("utf-8", "surrogateescape")
        target = f"{path}?{url.query.decode('utf-8', 'surrogateescape')}" if url.query else path
    return target


def client_response_headers(upstream_headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream's response headers minus hop-by-hop and framing ones, values byte for
    byte (any non-UTF-8 bytes were decoded with surrogateescape and are written back so)."""
    out: list[tuple[str, str]] = []
    listed: list[str] = []
    for name, value in upstream_headers:
        lower = name.lower()
        if lower in _RESPONSE_DROPPED:
            if lower == "connection":
                listed.append(value)
            continue
        out.append((name, value))
    if listed:
        named = _connection_tokens(listed)
        out = [(name, value) for name, value in out if name.lower() not in named]
    return out


@contextmanager
def translate_errors(upstream: str) -> Iterator[None]:
    """Timeouts and socket errors -> our `UpstreamError` tree, in one place."""
    try:
        yield
    except UpstreamError:
        raise
    except TimeoutError as exc:
        raise UpstreamTimeoutError(upstream, "no response in time") from exc
    except OSError as exc:
        raise UpstreamResetError(upstream, exc.strerror or type(exc).__name__) from exc


async def send(
    pool: Pool,
    method: str,
    head: bytes,
    chunked: bool,
    body: RequestBody,
    *,
    connect_timeout: float,
    deadline: float,
) -> UpstreamResponse:
    """Send the request; return once the response headers are in, by `deadline`."""
    request = pool.request(
        method,
        head,
        body.payload(),
        chunked=chunked,
        connect_timeout=connect_timeout,
        deadline=deadline,
    )
    if body.stream is None:
        return await request
    # A streamed upload waits on the client too, which the pool's timer cannot wake.
    with translate_errors(pool.name):
        async with asyncio.timeout_at(deadline):
            return await request


__all__ = ["RequestBody", "read_body", "request_head", "send"]
