"""The public request handler: route, attempt, fall back, relay (SPEC 3-5).

Each request reads the configuration once, at its start, so a reload never changes a
request half way; everything else it touches (pool, metrics, guard) is runtime state.
"""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from proxy.config import Config, Upstream
from proxy.errors import FailureReason, UpstreamError
from proxy.fallback import should_fall_back
from proxy.forward import (
    RequestBody,
    client_response_headers,
    read_body,
    send,
    translate_errors,
    upstream_request_headers,
)
from proxy.metrics import method_label
from proxy.routing import Decision, Side, choose_upstream, find_session_id, mint_session_id
from proxy.runtime import RUNTIME, Runtime

log = logging.getLogger("rollout.gateway")

UPSTREAM_HEADER = "X-Rollout-Upstream"
FALLBACK_HEADER = "X-Rollout-Fallback"


class _Outcome:
    """What one request ended as, for metrics: who served it and with which status."""

    __slots__ = ("code", "side")

    def __init__(self, side: Side) -> None:
        self.side = side
        self.code = 0


async def handle(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    config = runtime.store.config
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + config.timeouts.total

    session_id = find_session_id(request.headers, request.headers.get("Cookie"), config.session)
    minted = None
    if session_id is None and config.session.set_cookie:
        session_id = minted = mint_session_id()
    path = request.raw_path.partition("?")[0]
    decision = choose_upstream(
        config.rollout, session_id, path, guard_tripped=runtime.guard_tripped()
    )
    metrics = runtime.metrics
    metrics.routing.labels(upstream=decision.side.value, reason=decision.reason.value).inc()
    metrics.in_flight.inc()
    outcome = _Outcome(decision.side)
    try:
        return await _proxy(request, runtime, config, decision, minted, deadline, outcome)
    finally:
        metrics.in_flight.dec()
        if outcome.code:
            metrics.requests.labels(
                upstream=outcome.side.value,
                feature=decision.feature,
                method=method_label(request.method),
                code=str(outcome.code),
            ).inc()
            metrics.duration.labels(upstream=outcome.side.value, feature=decision.feature).observe(
                loop.time() - started
            )


async def _proxy(
    request: web.Request,
    runtime: Runtime,
    config: Config,
    decision: Decision,
    minted: str | None,
    deadline: float,
    outcome: _Outcome,
) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    body = await read_body(request, config.fallback.max_body_bytes)
    extra = {config.session.header: minted} if minted else None
    fallback_reason: FailureReason | None = None
    response: aiohttp.ClientResponse | None = None

    if decision.side is Side.SIGNAL:
        signal = config.upstreams.signal
        budget = deadline - loop.time()
        if body.buffered:
            # `timeouts.signal` runs from "request sent"; a streamed upload may take long to
            # send, so it gets the total budget (it cannot be replayed anyway).
            budget = min(config.timeouts.signal, budget)
        sent = loop.time()
        try:
            response = await _attempt(request, runtime, config, signal, body, extra, budget)
        except UpstreamError as err:
            runtime.record_attempt(Side.SIGNAL, ok=False, seconds=loop.time() - sent)
            runtime.metrics.upstream_errors.labels(
                upstream=signal.name, reason=err.reason.value
            ).inc()
            if not _may_fall_back(config, err.reason, request.method, body):
                outcome.code = err.status
                return _error_response(err)
            fallback_reason = err.reason
        else:
            failed = response.status >= 500
            runtime.record_attempt(Side.SIGNAL, ok=not failed, seconds=loop.time() - sent)
            if failed:
                runtime.metrics.upstream_errors.labels(upstream=signal.name, reason="status").inc()
            if response.status in config.fallback.statuses and _may_fall_back(
                config, FailureReason.STATUS, request.method, body
            ):
                response.release()
                response = None
                fallback_reason = FailureReason.STATUS

        if fallback_reason is not None:
            runtime.metrics.fallbacks.labels(
                feature=decision.feature, reason=fallback_reason.value
            ).inc()

    if response is None:
        legacy = config.upstreams.legacy
        outcome.side = Side.LEGACY
        sent = loop.time()
        try:
            response = await _attempt(
                request, runtime, config, legacy, body, extra, deadline - loop.time()
            )
        except UpstreamError as err:
            runtime.record_attempt(Side.LEGACY, ok=False, seconds=loop.time() - sent)
            runtime.metrics.upstream_errors.labels(
                upstream=legacy.name, reason=err.reason.value
            ).inc()
            outcome.code = err.status
            return _error_response(err, fallback_reason)
        failed = response.status >= 500
        runtime.record_attempt(Side.LEGACY, ok=not failed, seconds=loop.time() - sent)
        if failed:
            runtime.metrics.upstream_errors.labels(upstream=legacy.name, reason="status").inc()

    outcome.code = response.status
    return await _relay(request, response, config, outcome.side, fallback_reason, minted, deadline)


def _may_fall_back(config: Config, reason: FailureReason, method: str, body: RequestBody) -> bool:
    return should_fall_back(
        reason, method, body_buffered=body.buffered, enabled=config.fallback.enabled
    )


async def _attempt(
    request: web.Request,
    runtime: Runtime,
    config: Config,
    upstream: Upstream,
    body: RequestBody,
    extra: dict[str, str] | None,
    budget: float,
) -> aiohttp.ClientResponse:
    headers = upstream_request_headers(
        request, upstream, body_streamed=not body.buffered, extra=extra
    )
    return await send(
        runtime.client,
        upstream,
        request,
        headers,
        body,
        connect_timeout=config.timeouts.connect,
        headers_timeout=max(budget, 0.001),
    )


def _error_response(
    err: UpstreamError, fallback_reason: FailureReason | None = None
) -> web.Response:
    messages = {
        FailureReason.CONNECT: "upstream unreachable",
        FailureReason.TIMEOUT: "upstream timed out",
        FailureReason.RESET: "upstream connection failed",
    }
    headers = CIMultiDict({UPSTREAM_HEADER: err.upstream})
    if fallback_reason is not None:
        headers[FALLBACK_HEADER] = fallback_reason.value
    body = {"error": messages.get(err.reason, "upstream failed"), "upstream": err.upstream}
    return web.Response(
        status=err.status,
        text=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )


async def _relay(
    request: web.Request,
    upstream_response: aiohttp.ClientResponse,
    config: Config,
    side: Side,
    fallback_reason: FailureReason | None,
    minted: str | None,
    deadline: float,
) -> web.StreamResponse:
    """Stream the upstream's answer to the client; abort the connection on a mid-body failure."""
    headers = client_response_headers(upstream_response.headers)
    headers[UPSTREAM_HEADER] = side.value
    if fallback_reason is not None:
        headers[FALLBACK_HEADER] = fallback_reason.value
    out = web.StreamResponse(
        status=upstream_response.status, reason=upstream_response.reason, headers=headers
    )
    if minted:
        out.set_cookie(config.session.cookie, minted, httponly=True, samesite="Lax", path="/")
    try:
        await out.prepare(request)
        with translate_errors(side.value):
            async with asyncio.timeout_at(deadline):
                async for chunk in upstream_response.content.iter_any():
                    await out.write(chunk)
        await out.write_eof()
    except UpstreamError as err:
        # Headers are gone already: closing without the final chunk (or short of
        # Content-Length) is how HTTP tells the client the body is incomplete.
        log.warning("aborting client response: %s mid-body", err)
        upstream_response.close()
        _abort(request)
    except (ConnectionError, asyncio.CancelledError):
        upstream_response.close()  # the client left: do not keep reading the upstream
        raise
    finally:
        upstream_response.release()
    return out


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()
