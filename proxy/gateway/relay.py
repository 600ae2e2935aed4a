"""The upstream's answer to the client, through a sink; and the proxy's own error answers.

The relay writes only through a `Sink` (the client's `Request`, or a wrapper of it such
as the shadow's tee), so what is done with the bytes on the way is not its business.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

from proxy.config.values import Config
from proxy.errors import FailureReason, UpstreamError
from proxy.gateway.attempt import RequestBody
from proxy.gateway.headers import (
    FALLBACK_HEADER,
    UPSTREAM_HEADER,
    added_head,
    added_headers,
    client_response_headers,
    forwardable_head,
)
from proxy.http.client import UpstreamResponse, translate_errors
from proxy.http.request import Request
from proxy.rollout.routing import Decision, Side

log = logging.getLogger("rollout.gateway")

# An upstream body of at most this size, declared by Content-Length, that is already
# whole in the read buffer with its headers goes out in one write with them; every other
# body is streamed as it arrives (nothing waits for a body).
SMALL_BODY = 64 * 1024

_ERROR_MESSAGES = {
    FailureReason.CONNECT: "upstream unreachable",
    FailureReason.TIMEOUT: "upstream timed out",
    FailureReason.RESET: "upstream connection failed",
    FailureReason.TLS: "upstream TLS handshake failed",
}


class Sink(Protocol):
    """Where a response is written: `proxy.http.request.Request`'s response half."""

    def respond(
        self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> None: ...

    def respond_head(self, status: int, reason: str, head: bytes, body: bytes) -> None: ...

    def start(
        self, status: int, reason: str, headers: list[tuple[str, str]], length: int | None
    ) -> None: ...

    async def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


class Exchange(NamedTuple):
    """One request that has an upstream answer to relay: what a relay (and whatever wraps
    it) may need to know about it."""

    request: Request
    config: Config
    decision: Decision
    side: Side  # who answered: the decision's side, or legacy after a fallback
    fallback: FailureReason | None
    body: RequestBody
    minted: str | None  # a session id the proxy made up for this request
    response: UpstreamResponse
    session_id: str | None = None  # what routed it (in memory only: never logged)


# Writes the exchange's answer to the sink; returns the status the client was given.
Relay = Callable[[Exchange, Sink], Awaitable[int]]


def relay_complete(exchange: Exchange, sink: Sink) -> int | None:
    """Send the upstream's answer in one write if its whole body is already here (the
    common case of an API answer: no timer to arm, nothing to await); returns the status,
    or None, having sent nothing, when the body has to be streamed."""
    response = exchange.response
    length = response.content_length
    if length is None or length > SMALL_BODY or exchange.request.method == "HEAD":
        return None
    body = response.body_if_complete()
    if body is None:
        return None
    response.release()
    status, reason = response.status, response.reason
    side, fallback, cookie, minted = (
        exchange.side,
        exchange.fallback,
        exchange.config.session.cookie,
        exchange.minted,
    )
    head = forwardable_head(response.head) if len(body) == length else None
    if head is not None:
        # The upstream's header block goes out as bytes, framed by its Content-Length.
        sink.respond_head(status, reason, head + added_head(side, fallback, cookie, minted), body)
    else:
        headers = client_response_headers(response.headers)
        sink.respond(status, reason, headers + added_headers(side, fallback, cookie, minted), body)
    return status


async def relay_response(exchange: Exchange, sink: Sink) -> int:
    """Send the upstream's answer; abort the connection on a mid-body failure."""
    done = relay_complete(exchange, sink)
    if done is not None:
        return done
    response = exchange.response
    status, reason = response.status, response.reason
    length = response.content_length
    added = added_headers(
        exchange.side, exchange.fallback, exchange.config.session.cookie, exchange.minted
    )
    headers = client_response_headers(response.headers) + added
    # Once the head is out, only silence bounds the body (`timeouts.idle`), never its
    # length in time: an event stream or a long poll lasts as long as it keeps sending.
    idle = exchange.config.timeouts.idle
    loop = asyncio.get_running_loop()
    try:
        with translate_errors(exchange.side.value, timeout=f"no byte in {idle:g} s"):
            sink.start(status, reason, headers, length)
            async with asyncio.timeout(idle) as silence:
                async for chunk in response.iter_chunks():
                    await sink.write(chunk)
                    silence.reschedule(loop.time() + idle)
    except UpstreamError as err:
        response.close()
        # The head is gone already: closing without the final chunk (or short of
        # Content-Length) is how HTTP tells the client the body is incomplete.
        log.warning("aborting the client response: %s mid-body", err)
        sink.abort()
        return status
    except BaseException:
        # The client went away (ClientGoneError: counted as 499 by the caller) or the
        # task was cancelled: stop reading the upstream.
        response.close()
        raise
    response.release()
    sink.finish()
    return status


def respond_error(
    request: Request, err: UpstreamError, fallback: FailureReason | None = None
) -> None:
    """The proxy's own answer for a failed attempt (SPEC 4): JSON, 502 or 504."""
    headers = [(UPSTREAM_HEADER, err.upstream)]
    if fallback is not None:
        headers.append((FALLBACK_HEADER, fallback.value))
    message = _ERROR_MESSAGES.get(err.reason, "upstream failed")
    request.respond_json(err.status, {"error": message, "upstream": err.upstream}, headers)
