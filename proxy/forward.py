"""One attempt against one upstream: headers in and out, bodies, and error translation.

The proxy never follows redirects, never decompresses, never lets the client library add
headers of its own, and builds the upstream URL from the configured origin plus the
client's raw target, so the request line or `Host` can never point it elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.config import Upstream
from proxy.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamResetError,
    UpstreamTimeoutError,
)

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

# Headers aiohttp's client would otherwise invent; a proxy forwards only what it was sent.
SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")

_READ_CHUNK = 64 * 1024


def _dropped_names(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """Hop-by-hop names, including every header the `Connection` header lists."""
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
        if token.strip()
    }
    return HOP_BY_HOP | named if named else HOP_BY_HOP


def upstream_request_headers(
    request: web.BaseRequest,
    upstream: Upstream,
    *,
    body_streamed: bool,
    extra: dict[str, str] | None = None,
) -> CIMultiDict[str]:
    """The client's headers as the upstream should see them (SPEC 4)."""
    incoming = request.headers
    dropped = _dropped_names(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in dropped or lower == "host":
            continue
        if lower == "content-length" and not body_streamed:
            continue  # the client library sets it from the buffered body
        if lower in ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"):
            continue
        out.add(name, value)
    peer = request.remote or ""
    prior = ", ".join(incoming.getall("X-Forwarded-For", ()))
    out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    out["X-Forwarded-Proto"] = request.scheme
    if request.host:
        out["X-Forwarded-Host"] = incoming.get("Host", request.host)
    origin = upstream.origin
    out["Host"] = origin.raw_authority  # the upstream's own, as nginx does
    if extra:
        out.update(extra)
    return out


def client_response_headers(upstream_headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The upstream's response headers minus hop-by-hop ones."""
    dropped = _dropped_names(upstream_headers)
    return CIMultiDict((k, v) for k, v in upstream_headers.items() if k.lower() not in dropped)


def upstream_url(upstream: Upstream, request: web.BaseRequest) -> URL:
    """Configured origin + the client's path and query, byte for byte."""
    target = request.raw_path
    if not target.startswith("/"):
        # Absolute-form request line (`GET http://other.host/x`): keep only path and
        # query; the host part is never used.
        target = request.rel_url.raw_path_qs or "/"
    return URL(upstream.url + target, encoded=True)


@dataclass(slots=True)
class RequestBody:
    """The client's body: whole in memory when small enough to replay, else a stream."""

    data: bytes | None
    prefix: list[bytes]
    stream: aiohttp.StreamReader | None

    @property
    def buffered(self) -> bool:
        return self.stream is None

    def payload(self) -> bytes | AsyncIterator[bytes] | None:
        """What to hand to the client library; a fresh iterator per attempt."""
        if self.stream is None:
            return self.data
        return self._iterate(self.stream)

    async def _iterate(self, stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
        for chunk in self.prefix:
            yield chunk
        async for chunk in stream.iter_chunked(_READ_CHUNK):
            yield chunk


async def read_body(request: web.BaseRequest, max_buffered: int) -> RequestBody:
    """Buffer up to `max_buffered` bytes so the request can be replayed; stream beyond."""
    if not request.body_exists:
        return RequestBody(None, [], None)
    length = request.content_length
    if length is not None and length > max_buffered:
        return RequestBody(None, [], request.content)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return RequestBody(b"".join(chunks), [], None)
        chunks.append(chunk)
        size += len(chunk)
        if size > max_buffered:
            return RequestBody(None, chunks, request.content)


@contextmanager
def translate_errors(upstream: str) -> Iterator[None]:
    """aiohttp / asyncio exceptions -> our `UpstreamError` tree, in one place."""
    try:
        yield
    except UpstreamError:
        raise
    except aiohttp.ConnectionTimeoutError as exc:
        raise UpstreamConnectError(upstream, "connect timeout") from exc
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamConnectError(upstream, str(exc.os_error) or "connect failed") from exc
    except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
        raise UpstreamTimeoutError(upstream, "no response in time") from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise UpstreamResetError(upstream, "server disconnected") from exc
    except aiohttp.ClientOSError as exc:
        raise UpstreamResetError(upstream, str(exc.strerror or exc)) from exc
    except aiohttp.ClientResponseError as exc:
        raise UpstreamResetError(upstream, f"invalid response: {exc.message}") from exc
    except (aiohttp.ClientError, ConnectionError) as exc:
        raise UpstreamResetError(upstream, type(exc).__name__) from exc


async def send(
    session: aiohttp.ClientSession,
    upstream: Upstream,
    request: web.BaseRequest,
    headers: CIMultiDict[str],
    body: RequestBody,
    *,
    connect_timeout: float,
    headers_timeout: float,
) -> aiohttp.ClientResponse:
    """Send the request; return once the response headers are in."""
    timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=connect_timeout)
    with translate_errors(upstream.name):
        async with asyncio.timeout(headers_timeout):
            return await session.request(
                request.method,
                upstream_url(upstream, request),
                headers=headers,
                data=body.payload(),
                allow_redirects=False,
                timeout=timeout,
                skip_auto_headers=SKIP_AUTO_HEADERS,
            )
