"""The public request handler: route, attempt, fall back, relay (SPEC 3-5).

One attempt loop, as Caddy's `reverseproxy.go`: the request is prepared once (session,
route, body held for replay), then each upstream in turn is tried and observed the same
way; a pure rule (`fallback_reason`) says whether to try the next, one table
(`proxy.errors.STATUS`) what a failure answers.

Each request reads the configuration once, at its start, so a reload never changes a
request half way; everything else it touches (pools, metrics, guard) is runtime state.
"""

from __future__ import annotations

import asyncio
import functools

from proxy.config.values import Config
from proxy.errors import CLIENT_GONE, ClientGoneError, FailureReason, UpstreamError
from proxy.gateway.attempt import read_body, send
from proxy.gateway.relay import Exchange, Relay, respond_error
from proxy.gateway.state import Runtime
from proxy.http.client import UpstreamResponse
from proxy.http.request import Handler, Request
from proxy.rollout.fallback import attempt_failure, fallback_reason
from proxy.rollout.routing import Decision, Side, choose_upstream, find_session_id, mint_session_id

_ALLOW = [("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")]

# The upstreams a request may be tried on, in order: signal's requests may fall back.
_ATTEMPTS = {Side.SIGNAL: (Side.SIGNAL, Side.LEGACY), Side.LEGACY: (Side.LEGACY,)}


# What a request ended as, for metrics: who served it and with which status.
Outcome = tuple[Side, int]


def make_handler(runtime: Runtime, relay: Relay) -> Handler:
    """The public server's handler: every path and method is proxied; `relay` writes the
    answer (the composition root may wrap it, as the shadow does).

    (The loop is bound here: `asyncio.get_running_loop()` costs a getpid() system call
    on every call, twice per request.)
    """
    return functools.partial(_handle, runtime=runtime, relay=relay, loop=asyncio.get_running_loop())


async def _handle(
    request: Request, *, runtime: Runtime, relay: Relay, loop: asyncio.AbstractEventLoop
) -> None:
    if request.method == "CONNECT":
        # Never a tunnel: this is a gateway to two fixed upstreams, not a forward proxy.
        request.keep_alive = False
        request.respond_json(405, {"error": "CONNECT is not supported", "upstream": None}, _ALLOW)
        return
    config = runtime.store.config
    started = loop.time()

    session = config.session
    headers = request.headers
    session_id = find_session_id(headers, headers.get("Cookie"), session)
    minted = None
    if session_id is None and session.set_cookie:
        session_id = minted = mint_session_id()
    path = request.target.partition("?")[0]
    decision = choose_upstream(
        config.rollout, session_id, path, guard_tripped=runtime.guard.trip is not None
    )
    metrics = runtime.metrics
    metrics.routed(decision.side, decision.reason)
    runtime.activity.count(decision, session_id, config.rollout, started)
    runtime.request_started()
    outcome: Outcome | None = None
    try:
        outcome = await _proxy(
            request, runtime, relay, loop, config, decision, session_id, minted, started
        )
    finally:
        runtime.request_finished()
        if outcome is not None:
            side, code = outcome
            metrics.answered(side, decision.feature, request.method, code, loop.time() - started)


async def _proxy(
    request: Request,
    runtime: Runtime,
    relay: Relay,
    loop: asyncio.AbstractEventLoop,
    config: Config,
    decision: Decision,
    session_id: str | None,
    minted: str | None,
    started: float,
) -> Outcome:
    side = decision.side
    if request.upgrade is not None:
        refused = runtime.upgrades.refusal(config.upgrade, request, side)
        if refused is not None:
            return side, refused
    try:
        body = await read_body(request, config.fallback.max_body_bytes, config.timeouts.idle)
        extra = {config.session.header: minted} if minted else None
        deadline = started + config.timeouts.total
        upstreams = config.upstreams
        fallback: FailureReason | None = None
        response: UpstreamResponse | None = None
        error: UpstreamError | None = None
        for side in _ATTEMPTS[decision.side]:
            upstream = upstreams.signal if side is Side.SIGNAL else upstreams.legacy
            sent = loop.time()
            until = deadline
            if side is Side.SIGNAL and body.buffered:
                # `timeouts.signal` runs from "request sent"; a streamed upload may take
                # long to send, so it gets the total budget (it cannot be replayed anyway).
                until = min(sent + config.timeouts.signal, deadline)
            try:
                response = await send(
                    runtime.pool(upstream),
                    request,
                    upstream,
                    body,
                    extra,
                    connect_timeout=config.timeouts.connect,
                    deadline=until,
                )
                error = None
            except UpstreamError as err:
                response, error = None, err
            status = None if response is None else response.status
            reason = None if error is None else error.reason
            runtime.observe(side, attempt_failure(reason, status), loop.time() - sent)
            if side is not Side.SIGNAL:
                break
            fallback = fallback_reason(
                reason, status, request.method, body_buffered=body.buffered, config=config.fallback
            )
            if fallback is None:
                break
            runtime.metrics.fallback(decision.feature, fallback)
            if response is not None:
                response.close()
        if response is None:
            assert error is not None
            respond_error(request, error, fallback)
            if request.upgrade is not None:
                runtime.upgrades.counted(side, "error")
            return side, error.status
        exchange = Exchange(
            request, config, decision, side, fallback, body, minted, response, session_id
        )
        return side, await relay(exchange, request)
    except ClientGoneError:
        # The client left while sending its body or receiving the answer: not the
        # upstream's fault, not counted against it, and nobody to answer.
        request.abort()
        return side, CLIENT_GONE
