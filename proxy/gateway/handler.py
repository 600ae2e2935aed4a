"""The public request handler: route, attempt, fall back, relay (SPEC 3-5).

One attempt loop, as Caddy's `reverseproxy.go`: the request is prepared once (session,
route, body held for replay), then each upstream in turn is tried and observed the same
way; a pure rule (`fallback_reason`) says whether to try the next, one table
(`proxy.errors.STATUS`) what a failure answers.

Most requests never reach the loop as a coroutine: `proxy.gateway.fast` carries the
common case by callbacks and hands over here, where it stands, whatever has to wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from proxy.errors import CLIENT_GONE, ClientGoneError, UpstreamError
from proxy.gateway import fast
from proxy.gateway.attempt import read_body, send
from proxy.gateway.flight import Flight, Outcome
from proxy.gateway.relay import Exchange, Relay
from proxy.gateway.state import Runtime
from proxy.http.client import UpstreamResponse
from proxy.http.request import Handler, Request

_ALLOW = [("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")]


def make_handler(runtime: Runtime, relay: Relay) -> Handler:
    """The public server's handler: every path and method is proxied; `relay` writes the
    answer (the composition root may wrap it, as the shadow does).

    (The loop is bound here: `asyncio.get_running_loop()` costs a getpid() system call
    on every call.)
    """
    loop = asyncio.get_running_loop()

    def handle(request: Request) -> Awaitable[None] | None:
        if request.method == "CONNECT":
            # Never a tunnel: this is a gateway to two fixed upstreams, not a forward proxy.
            request.keep_alive = False
            request.respond_json(
                405, {"error": "CONNECT is not supported", "upstream": None}, _ALLOW
            )
            return None
        flight = Flight(request, runtime, loop)
        try:
            if fast.carry(flight, relay, carry):
                return None
        except BaseException:
            flight.end(None)
            raise
        return carry(flight, relay)

    return handle


async def carry(
    flight: Flight, relay: Relay, first: int = 0, exchange: Exchange | None = None
) -> None:
    """The request from its attempt number `first` on (or, given an `exchange`, from the
    relay of that answer) to its end."""
    outcome: Outcome | None = None
    try:
        if exchange is not None:
            outcome = await _relay(flight, relay, exchange)
        else:
            outcome = await _proxy(flight, relay, first)
    finally:
        flight.end(outcome)


async def _proxy(flight: Flight, relay: Relay, first: int) -> Outcome:
    request, config, runtime, loop = flight.request, flight.config, flight.runtime, flight.loop
    attempts = flight.attempts()[first:]
    side = attempts[0]
    if request.upgrade is not None:
        refused = runtime.upgrades.refusal(config.upgrade, request, side)
        if refused is not None:
            return side, refused
    try:
        body = await read_body(request, config.fallback.max_body_bytes, config.timeouts.idle)
        response: UpstreamResponse | None = None
        error: UpstreamError | None = None
        for side in attempts:
            upstream = flight.upstream(side)
            sent = loop.time()
            try:
                response = await send(
                    runtime.pool(upstream),
                    request,
                    upstream,
                    body,
                    flight.extra,
                    connect_timeout=config.timeouts.connect,
                    deadline=flight.until(side, sent, body.buffered),
                    fresh=flight.fresh,
                )
                error = None
            except UpstreamError as err:
                response, error = None, err
            flight.fresh = False
            if not flight.settle(side, response, error, sent, body.buffered):
                break
        if response is None:
            assert error is not None
            return side, flight.refuse(side, error)
        return await _relay(flight, relay, flight.exchange(side, body, response))
    except ClientGoneError:
        # The client left while sending its body or receiving the answer: not the
        # upstream's fault, not counted against it, and nobody to answer.
        request.abort()
        return side, CLIENT_GONE


async def _relay(flight: Flight, relay: Relay, exchange: Exchange) -> Outcome:
    try:
        return exchange.side, await relay(exchange, flight.request)
    except ClientGoneError:
        flight.request.abort()
        return exchange.side, CLIENT_GONE
