"""One attempt against one upstream: headers in and out, bodies, and error translation.

The proxy never follows redirects, never decompresses, never invents headers, and builds
the request from the configured upstream plus the client's raw target, so the request
line or `Host` can never point it elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import StreamReader, web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import Upstream
from proxy.errors import (
    ClientGoneError,
    UpstreamError,
    UpstreamResetError,
    UpstreamTimeoutError,
)
from proxy.upstream import Pool, UpstreamResponse, build_head

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

# Methods whose empty body is still announced with `Content-Length: 0` (RFC 9110 8.6).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

_READ_CHUNK = 64 * 1024


def _dropped_names(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """Hop-by-hop names, including every header the `Connection` header lists."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
        if token.strip()
    }
    return HOP_BY_HOP | named if named else HOP_BY_HOP


@dataclass(slots=True)
class RequestBody:
    """The client's body: whole in memory when small enough to replay, else a stream."""

    data: bytes | None
    prefix: list[bytes]
    stream: StreamReader | None
    length: int | None  # declared Content-Length of a streamed body

    @property
    def buffered(self) -> bool:
        return self.stream is None

    def payload(self) -> bytes | AsyncIterator[bytes] | None:
        """What to send; a fresh iterator per attempt (only unconsumed streams are replayed)."""
        if self.stream is None:
            return self.data
        return self._iterate(self.stream)

    async def _iterate(self, stream: StreamReader) -> AsyncIterator[bytes]:
        for chunk in self.prefix:
            yield chunk
        try:
            async for chunk in stream.iter_chunked(_READ_CHUNK):
                yield chunk
        except ConnectionError as exc:
            raise ClientGoneError("client disconnected during the upload") from exc


async def read_body(request: web.BaseRequest, max_buffered: int) -> RequestBody:
    """Buffer up to `max_buffered` bytes so the request can be replayed; stream beyond."""
    try:
        return await _read_body(request, max_buffered)
    except ConnectionError as exc:
        raise ClientGoneError("client disconnected during the upload") from exc


async def _read_body(request: web.BaseRequest, max_buffered: int) -> RequestBody:
    if not request.body_exists:
        return RequestBody(None, [], None, None)
    length = request.content_length
    if length is not None and length > max_buffered:
        return RequestBody(None, [], request.content, length)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return RequestBody(b"".join(chunks), [], None, None)
        chunks.append(chunk)
        size += len(chunk)
        if size > max_buffered:
            return RequestBody(None, chunks, request.content, length)


def request_head(
    request: web.BaseRequest,
    upstream: Upstream,
    body: RequestBody,
    extra: dict[str, str] | None = None,
) -> tuple[bytes, bool]:
    """The request line and headers for the upstream (SPEC 4), and whether to chunk."""
    incoming = request.headers
    items = list(incoming.items())
    dropped = _dropped_names(items)
    out = [
        (name, value)
        for name, value in items
        if (lower := name.lower()) not in dropped
        and lower not in _REPLACED
        and not (extra and name in extra)
    ]
    peer = request.remote or ""
    prior = ", ".join(incoming.getall("X-Forwarded-For", ()))
    out.append(("X-Forwarded-For", f"{prior}, {peer}" if prior else peer))
    out.append(("X-Forwarded-Proto", request.scheme))
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


def upstream_target(request: web.BaseRequest) -> str:
    """The client's path and query, byte for byte."""
    target = request.raw_path
    if not target.startswith("/"):
        # Absolute-form request line (`GET http://other.host/x`): keep only path and
        # query; the host part is never used.
        target = request.rel_url.raw_path_qs or "/"
    return target


def client_response_headers(
    upstream: str, upstream_headers: list[tuple[str, str]]
) -> CIMultiDict[str]:
    """The upstream's response headers minus hop-by-hop ones.

    A value that is not UTF-8 cannot be written by aiohttp (it would silently lose the
    bytes), so such a response is refused as invalid rather than altered.
    """
    dropped = _dropped_names(upstream_headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream_headers:
        if name.lower() in dropped:
            continue
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise UpstreamResetError(
                    upstream, f"invalid response: header {name} is not UTF-8"
                ) from None
        out.add(name, value)
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
    request: web.BaseRequest,
    head: bytes,
    chunked: bool,
    body: RequestBody,
    *,
    connect_timeout: float,
    headers_timeout: float,
) -> UpstreamResponse:
    """Send the request; return once the response headers are in."""
    with translate_errors(pool.name):
        async with asyncio.timeout(headers_timeout):
            return await pool.request(
                request.method,
                head,
                body.payload(),
                chunked=chunked,
                connect_timeout=connect_timeout,
            )


__all__ = ["CIMultiDictProxy", "RequestBody", "read_body", "request_head", "send"]
