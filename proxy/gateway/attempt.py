"""One attempt against one upstream: the client's body held for replay, the request sent.

The body is read once per request (`read_body`); each attempt sends it again
(`RequestBody.payload`), which only a buffered body allows: a streamed one is consumed
by the first attempt that reads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from proxy.config.values import Upstream
from proxy.gateway.headers import request_head
from proxy.http.client import Pool, UpstreamResponse, translate_errors
from proxy.http.request import IncomingBody, Request

# Methods whose empty body is still announced with `Content-Length: 0` (RFC 9110 8.6).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


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


async def read_body(request: Request, max_buffered: int, idle: float) -> RequestBody:
    """Buffer up to `max_buffered` bytes so the request can be replayed; stream beyond.

    Raises `ClientGoneError` if the client leaves before its body is in, or is silent
    for `idle` seconds while sending it (buffered or streamed).
    """
    stream = request.body
    if stream is None:
        return NO_BODY
    stream.idle = idle
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


def framing(method: str, body: RequestBody) -> tuple[str | None, bool]:
    """The body's framing header line for the upstream, and whether to chunk it."""
    if body.stream is not None:
        if body.length is not None:
            return f"Content-Length: {body.length}", False
        return "Transfer-Encoding: chunked", True
    if body.data:
        return f"Content-Length: {len(body.data)}", False
    if method in _BODY_METHODS or body.data is not None:
        return "Content-Length: 0", False
    return None, False


def upstream_head(
    request: Request, upstream: Upstream, body: RequestBody, extra: dict[str, str] | None
) -> tuple[bytes, bool]:
    """The request as `upstream` gets it, and whether its body goes chunked."""
    line, chunked = framing(request.method, body)
    return request_head(request, upstream, line, extra), chunked


async def send(
    pool: Pool,
    request: Request,
    upstream: Upstream,
    body: RequestBody,
    extra: dict[str, str] | None,
    *,
    connect_timeout: float,
    deadline: float,
    fresh: bool = False,
) -> UpstreamResponse:
    """Send the request; return once the response headers are in, by `deadline`.

    Raises `UpstreamError` when the attempt fails, `ClientGoneError` when the client
    leaves during a streamed upload.
    """
    line, chunked = framing(request.method, body)
    head = request_head(request, upstream, line, extra)
    sending = pool.request(
        request.method,
        head,
        body.payload(),
        chunked=chunked,
        connect_timeout=connect_timeout,
        deadline=deadline,
        upgrade=bool(request.upgrade),
        fresh=fresh,
    )
    if body.stream is None:
        return await sending
    # A streamed upload waits on the client too, which the pool's timer cannot wake.
    with translate_errors(pool.name):
        async with asyncio.timeout_at(deadline):
            return await sending
