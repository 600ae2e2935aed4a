"""The public request handler: route, attempt, fall back, relay (SPEC 3-5).

Each request reads the configuration once, at its start, so a reload never changes a
request half way; everything else it touches (pools, metrics, guard) is runtime state.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from proxy.config.values import Config, Upstream
from proxy.errors import ClientGoneError, FailureReason, UpstreamError, UpstreamTimeoutError
from proxy.forward import (
    RequestBody,
    client_response_headers,
    forwardable_head,
    read_body,
    request_head,
    send,
)
from proxy.http.client import UpstreamResponse
from proxy.http.server import Handler, Request
from proxy.rollout.fallback import should_fall_back
from proxy.rollout.routing import Decision, Side, choose_upstream, find_session_id, mint_session_id
from proxy.runtime import Runtime

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
_ALLOW = [("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")]


class _Outcome:
    """What one request ended as, for metrics: who served it and with which status."""

    __slots__ = ("code", "side")

    def __init__(self, side: Side) -> None:
        self.side = side
        self.code = 0


def make_handler(runtime: Runtime) -> Handler:
    """The public server's handler: every path and method is proxied.

    (The loop is bound here: `asyncio.get_running_loop()` costs a getpid() system call
    on every call, twice per request.)
    """
    return functools.partial(_handle, runtime=runtime, loop=asyncio.get_running_loop())


async def _handle(request: Request, *, runtime: Runtime, loop: asyncio.AbstractEventLoop) -> None:
    if request.method == "CONNECT":
        # Never a tunnel: this is a gateway to two fixed upstreams, not a forward proxy.
        request.keep_alive = False
        request.respond_json(405, {"error": "CONNECT is not supported", "upstream": None}, _ALLOW)
        return
    config = runtime.store.config
    started = loop.time()
    deadline = started + config.timeouts.total

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
    runtime.request_started()
    outcome = _Outcome(decision.side)
    try:
        await _proxy(request, runtime, loop, config, decision, minted, deadline, outcome)
    except ClientGoneError:
        # The client left while sending its body or receiving the answer: not the
        # upstream's fault, not counted against it, and nobody to answer.
        outcome.code = CLIENT_GONE
        request.abort()
    finally:
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
    request: Request,
    runtime: Runtime,
    loop: asyncio.AbstractEventLoop,
    config: Config,
    decision: Decision,
    minted: str | None,
    deadline: float,
    outcome: _Outcome,
) -> None:
    body = await read_body(request, config.fallback.max_body_bytes)
    extra = {config.session.header: minted} if minted else None
    fallback_reason: FailureReason | None = None
    response: UpstreamResponse | None = None

    if decision.side is Side.SIGNAL:
        signal = config.upstreams.signal
        sent = loop.time()
        # `timeouts.signal` runs from "request sent"; a streamed upload may take long to
        # send, so it gets the total budget (it cannot be replayed anyway).
        until = min(sent + config.timeouts.signal, deadline) if body.buffered else deadline
        try:
            response = await _attempt(request, runtime, config, signal, body, extra, until)
        except UpstreamError as err:
            runtime.record_attempt(Side.SIGNAL, ok=False, seconds=loop.time() - sent)
            runtime.metrics.upstream_error(Side.SIGNAL, err.reason)
            if not _may_fall_back(config, err.reason, request.method, body):
                outcome.code = err.status
                _send_error(request, err)
                return
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
            response = await _attempt(request, runtime, config, legacy, body, extra, deadline)
        except UpstreamError as err:
            runtime.record_attempt(Side.LEGACY, ok=False, seconds=loop.time() - sent)
            runtime.metrics.upstream_error(Side.LEGACY, err.reason)
            outcome.code = err.status
            _send_error(request, err, fallback_reason)
            return
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
    await _relay(request, response, config, outcome, fallback_reason, minted, deadline, capture)
    if capture is not None and capture.complete:
        # The client has its whole answer; the comparison runs in a task of its own.
        runtime.mirror(request, config, decision.feature, body, extra, response, capture)


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

    def whole(self, body: bytes) -> None:
        """The answer arrived in one piece."""
        self.add(body)
        self.complete = True

    @property
    def body(self) -> bytes | None:
        return None if self.overflow else b"".join(self.chunks)


def _may_fall_back(config: Config, reason: FailureReason, method: str, body: RequestBody) -> bool:
    return should_fall_back(
        reason, method, body_buffered=body.buffered, enabled=config.fallback.enabled
    )


async def _attempt(
    request: Request,
    runtime: Runtime,
    config: Config,
    upstream: Upstream,
    body: RequestBody,
    extra: dict[str, str] | None,
    deadline: float,
) -> UpstreamResponse:
    """Send the request; return once the response headers are in, by `deadline`."""
    head, chunked = request_head(request, upstream, body, extra)
    return await send(
        runtime.pool(upstream),
        request.method,
        head,
        chunked,
        body,
        connect_timeout=config.timeouts.connect,
        deadline=deadline,
    )


def _added_headers(
    side: Side, fallback_reason: FailureReason | None, config: Config, minted: str | None
) -> list[tuple[str, str]]:
    """What the proxy adds to an upstream's answer (SPEC 4; the minted session cookie)."""
    added = [(UPSTREAM_HEADER, side.value)]
    if fallback_reason is not None:
        added.append((FALLBACK_HEADER, fallback_reason.value))
    if minted:
        cookie = f"{config.session.cookie}={minted}; HttpOnly; Path=/; SameSite=Lax"
        added.append(("Set-Cookie", cookie))
    return added


def _send_error(
    request: Request, err: UpstreamError, fallback_reason: FailureReason | None = None
) -> None:
    headers = [(UPSTREAM_HEADER, err.upstream)]
    if fallback_reason is not None:
        headers.append((FALLBACK_HEADER, fallback_reason.value))
    message = _ERROR_MESSAGES.get(err.reason, "upstream failed")
    request.respond_json(err.status, {"error": message, "upstream": err.upstream}, headers)


async def _relay(
    request: Request,
    upstream_response: UpstreamResponse,
    config: Config,
    outcome: _Outcome,
    fallback_reason: FailureReason | None,
    minted: str | None,
    deadline: float,
    capture: Capture | None,
) -> None:
    """Send the upstream's answer to the client; abort the connection on a mid-body failure."""
    side = outcome.side
    status, reason = upstream_response.status, upstream_response.reason
    length = upstream_response.content_length
    small = length is not None and length <= SMALL_BODY and request.method != "HEAD"
    added = _added_headers(side, fallback_reason, config, minted)
    body = upstream_response.body_if_complete() if small else None
    if body is not None:
        # The common case of an API answer: the whole body came with the headers. One
        # write for head and body, and no timer to arm.
        upstream_response.release()
        head = forwardable_head(upstream_response.head) if len(body) == length else None
        if head is not None:
            # The upstream's header block goes out as bytes, framed by its Content-Length.
            lines = "".join(f"{name}: {value}\r\n" for name, value in added)
            request.respond_head(status, reason, head + lines.encode(), body)
        else:
            headers = client_response_headers(upstream_response.headers) + added
            request.respond(status, reason, headers, body)
        if capture is not None:
            capture.whole(body)
        return
    headers = client_response_headers(upstream_response.headers) + added
    try:
        async with asyncio.timeout_at(deadline):
            if small:
                body = await upstream_response.read()
                upstream_response.release()
                request.respond(status, reason, headers, body)
                if capture is not None:
                    capture.whole(body)
                return
            request.start(status, reason, headers, length)
            async for chunk in upstream_response.iter_chunks():
                await request.write(chunk)
                if capture is not None:
                    capture.add(chunk)
    except (UpstreamError, TimeoutError) as exc:
        upstream_response.close()
        err = (
            exc
            if isinstance(exc, UpstreamError)
            else UpstreamTimeoutError(side.value, "body too slow")
        )
        if not request.started:
            outcome.code = err.status
            _send_error(request, err, fallback_reason)
            return
        # Headers are gone already: closing without the final chunk (or short of
        # Content-Length) is how HTTP tells the client the body is incomplete.
        log.warning("aborting the client response: %s mid-body", err)
        request.abort()
        return
    except BaseException:
        # The client went away (ClientGoneError: counted as 499 by the caller) or the
        # task was cancelled: stop reading the upstream.
        upstream_response.close()
        raise
    upstream_response.release()
    request.finish()
    if capture is not None:
        capture.complete = True
