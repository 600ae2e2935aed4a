"""The public request handler: route, attempt, fall back, relay (SPEC 3-5).

Each request reads the configuration once, at its start, so a reload never changes a
request half way; everything else it touches (pools, metrics, guard) is runtime state.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from multidict import CIMultiDict

from proxy.config import Config, Upstream
from proxy.errors import ClientGoneError, FailureReason, UpstreamError
from proxy.fallback import should_fall_back
from proxy.forward import (
    RequestBody,
    client_response_headers,
    read_body,
    request_head,
    send,
    translate_errors,
)
from proxy.routing import Decision, Side, choose_upstream, find_session_id, mint_session_id
from proxy.runtime import Runtime
from proxy.upstream import UpstreamResponse

log = logging.getLogger("rollout.gateway")

UPSTREAM_HEADER = "X-Rollout-Upstream"
FALLBACK_HEADER = "X-Rollout-Fallback"

# An upstream body of at most this size, declared by Content-Length, is read whole and
# sent with the headers in one write; larger or unsized bodies are streamed.
SMALL_BODY = 64 * 1024

CLIENT_GONE = 499  # nginx's code for "client closed the request", for metrics only

_ERROR_MESSAGES = {
    FailureReason.CONNECT: "upstream unreachable",
    FailureReason.TIMEOUT: "upstream timed out",
    FailureReason.RESET: "upstream connection failed",
}


class _Outcome:
    """What one request ended as, for metrics: who served it and with which status."""

    __slots__ = ("code", "side")

    def __init__(self, side: Side) -> None:
        self.side = side
        self.code = 0


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def make_handler(runtime: Runtime) -> Handler:
    """The handler for aiohttp's low-level server: every path and method is proxied.

    (No Application and router: there is nothing to route, and skipping them saves
    ~6 % of the CPU per request on the bench.)
    """

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        return await _handle(request, runtime)

    return handle


async def _handle(request: web.BaseRequest, runtime: Runtime) -> web.StreamResponse:
    if request.method == "CONNECT":
        # Never a tunnel: this is a gateway to two fixed upstreams, not a forward proxy.
        return web.json_response(
            {"error": "CONNECT is not supported", "upstream": None},
            status=405,
            headers={"Allow": "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"},
        )
    config = runtime.store.config
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + config.timeouts.total

    session = config.session
    session_id = find_session_id(request.headers, request.headers.get("Cookie"), session)
    minted = None
    if session_id is None and session.set_cookie:
        session_id = minted = mint_session_id()
    path = request.raw_path.partition("?")[0]
    decision = choose_upstream(
        config.rollout, session_id, path, guard_tripped=runtime.guard.trip is not None
    )
    metrics = runtime.metrics
    metrics.routed(decision.side, decision.reason)
    metrics.in_flight.inc()
    runtime.request_started()
    outcome = _Outcome(decision.side)
    try:
        return await _proxy(request, runtime, config, decision, minted, deadline, outcome)
    except ClientGoneError:
        # The client left while sending its body: not the upstream's fault, not counted
        # against it, and nobody to answer.
        outcome.code = CLIENT_GONE
        return web.Response(status=CLIENT_GONE)
    finally:
        metrics.in_flight.dec()
        runtime.request_finished()
        if outcome.code:
            metrics.answered(
                outcome.side,
                decision.feature,
                request.method,
                outcome.code,
                loop.time() - started,
            )


async def _proxy(
    request: web.BaseRequest,
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
    response: UpstreamResponse | None = None

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
            runtime.metrics.upstream_error(Side.SIGNAL, err.reason)
            if not _may_fall_back(config, err.reason, request.method, body):
                outcome.code = err.status
                return _error_response(err)
            fallback_reason = err.reason
        else:
            failed = response.status >= 500
            runtime.record_attempt(Side.SIGNAL, ok=not failed, seconds=loop.time() - sent)
            if failed:
                runtime.metrics.upstream_error(Side.SIGNAL, FailureReason.STATUS)
            if response.status in config.fallback.statuses and _may_fall_back(
                config, FailureReason.STATUS, request.method, body
            ):
                response.close()
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
            runtime.metrics.upstream_error(Side.LEGACY, err.reason)
            outcome.code = err.status
            return _error_response(err, fallback_reason)
        failed = response.status >= 500
        runtime.record_attempt(Side.LEGACY, ok=not failed, seconds=loop.time() - sent)
        if failed:
            runtime.metrics.upstream_error(Side.LEGACY, FailureReason.STATUS)

    outcome.code = response.status
    capture = None
    if (
        decision.side is Side.LEGACY
        and config.shadow.enabled
        and body.buffered
        and runtime.shadow.sampled(config.shadow, request.method)
    ):
        capture = Capture(config.fallback.max_body_bytes)
    out = await _relay(
        request,
        response,
        config,
        outcome,
        fallback_reason,
        minted,
        deadline,
        capture,
        runtime.draining,
    )
    if capture is not None and capture.complete:
        # A task of its own: it first runs when this one yields, which is after aiohttp
        # has written the response we return (or, for a stream, after our write_eof).
        runtime.mirror(request, config, decision.feature, body, extra, response, capture)
    return out


class Capture:
    """Legacy's answer kept for the shadow comparison, up to a size limit."""

    __slots__ = ("chunks", "complete", "limit", "overflow", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = False
        self.complete = False

    def add(self, chunk: bytes) -> None:
        if self.overflow:
            return
        self.size += len(chunk)
        if self.size > self.limit:
            self.overflow = True
            self.chunks.clear()
        else:
            self.chunks.append(chunk)

    @property
    def body(self) -> bytes | None:
        return None if self.overflow else b"".join(self.chunks)


def _may_fall_back(config: Config, reason: FailureReason, method: str, body: RequestBody) -> bool:
    return should_fall_back(
        reason, method, body_buffered=body.buffered, enabled=config.fallback.enabled
    )


async def _attempt(
    request: web.BaseRequest,
    runtime: Runtime,
    config: Config,
    upstream: Upstream,
    body: RequestBody,
    extra: dict[str, str] | None,
    budget: float,
) -> UpstreamResponse:
    head, chunked = request_head(request, upstream, body, extra)
    return await send(
        runtime.pool(upstream),
        request,
        head,
        chunked,
        body,
        connect_timeout=config.timeouts.connect,
        headers_timeout=max(budget, 0.001),
    )


def _error_response(
    err: UpstreamError, fallback_reason: FailureReason | None = None
) -> web.Response:
    headers = CIMultiDict({UPSTREAM_HEADER: err.upstream})
    if fallback_reason is not None:
        headers[FALLBACK_HEADER] = fallback_reason.value
    body = {"error": _ERROR_MESSAGES.get(err.reason, "upstream failed"), "upstream": err.upstream}
    return web.Response(
        status=err.status,
        text=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )


async def _relay(
    request: web.BaseRequest,
    upstream_response: UpstreamResponse,
    config: Config,
    outcome: _Outcome,
    fallback_reason: FailureReason | None,
    minted: str | None,
    deadline: float,
    capture: Capture | None = None,
    draining: bool = False,
) -> web.StreamResponse:
    """Send the upstream's answer to the client; abort the connection on a mid-body failure."""
    side = outcome.side
    status, reason = upstream_response.status, upstream_response.reason or None
    length = upstream_response.content_length
    small = length is not None and length <= SMALL_BODY and request.method != "HEAD"
    out: web.StreamResponse | None = None
    try:
        with translate_errors(side.value):
            headers = client_response_headers(side.value, upstream_response.headers)
            headers[UPSTREAM_HEADER] = side.value
            if fallback_reason is not None:
                headers[FALLBACK_HEADER] = fallback_reason.value
            async with asyncio.timeout_at(deadline):
                if small:
                    # One write for head and body: the common case of an API answer.
                    body = await upstream_response.read()
                    del headers["Content-Length"]
                    out = web.Response(status=status, reason=reason, headers=headers, body=body)
                    _finish_headers(out, config, minted, draining)
                    upstream_response.release()
                    if capture is not None:
                        capture.add(body)
                        capture.complete = True
                    return out
                out = web.StreamResponse(status=status, reason=reason, headers=headers)
                _finish_headers(out, config, minted, draining)
                await out.prepare(request)
                async for chunk in upstream_response.iter_chunks():
                    await out.write(chunk)
                    if capture is not None:
                        capture.add(chunk)
        await out.write_eof()
        if capture is not None:
            capture.complete = True
    except UpstreamError as err:
        upstream_response.close()
        if out is None or not out.prepared:
            outcome.code = err.status
            return _error_response(err, fallback_reason)
        # Headers are gone already: closing without the final chunk (or short of
        # Content-Length) is how HTTP tells the client the body is incomplete.
        log.warning("aborting the client response: %s mid-body", err)
        _abort(request)
        return out
    except ConnectionError:
        # The client went away; stop reading the upstream. aiohttp finishes quietly.
        upstream_response.close()
        outcome.code = CLIENT_GONE
        return out if out is not None else web.Response(status=CLIENT_GONE)
    except asyncio.CancelledError:
        upstream_response.close()
        raise
    upstream_response.release()
    return out


def _finish_headers(
    out: web.StreamResponse, config: Config, minted: str | None, draining: bool
) -> None:
    if minted:
        out.set_cookie(config.session.cookie, minted, httponly=True, samesite="Lax", path="/")
    if draining:
        # Shutting down: tell keep-alive clients to reconnect (to another replica).
        out.force_close()


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()
