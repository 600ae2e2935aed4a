"""One request's way through the gateway: begun, each attempt settled, ended (SPEC 3-5).

The handler carries a request by callbacks where it can (`proxy.gateway.fast`) and by a
coroutine otherwise (`proxy.gateway.handler`). Both paths begin it here (session,
route, the counts of a new request), settle every attempt here (observed, fallback or
not) and end it here (answered, timed), so each rule has one implementation whichever
path runs it.

Each request reads the configuration once, at its start, so a reload never changes a
request half way; everything else it touches (pools, metrics, guard) is runtime state.
"""

from __future__ import annotations

import asyncio

from proxy.config.values import Upstream
from proxy.errors import FailureReason, UpstreamError
from proxy.gateway.attempt import RequestBody
from proxy.gateway.relay import Exchange, respond_error
from proxy.gateway.state import Runtime
from proxy.http.client import UpstreamResponse
from proxy.http.request import Request
from proxy.rollout.fallback import attempt_failure, fallback_reason
from proxy.rollout.routing import Side, choose_upstream, find_session_id, mint_session_id

# The upstreams a request may be tried on, in order: signal's requests may fall back.
ATTEMPTS = {Side.SIGNAL: (Side.SIGNAL, Side.LEGACY), Side.LEGACY: (Side.LEGACY,)}

# What a request ended as, for metrics: who served it and with which status.
Outcome = tuple[Side, int]


class Flight:
    """A request from its head to its last byte: what it was routed by and what it met."""

    __slots__ = (
        "config",
        "deadline",
        "decision",
        "extra",
        "fallback",
        "fresh",
        "loop",
        "minted",
        "request",
        "runtime",
        "session_id",
        "started",
    )

    def __init__(self, request: Request, runtime: Runtime, loop: asyncio.AbstractEventLoop) -> None:
        config = self.config = runtime.store.config
        started = self.started = loop.time()
        session = config.session
        headers = request.headers
        session_id = find_session_id(headers, headers.get("Cookie"), session)
        minted = None
        if session_id is None and session.set_cookie:
            session_id = minted = mint_session_id()
        decision = self.decision = choose_upstream(
            config.rollout,
            session_id,
            request.target.partition("?")[0],
            guard_tripped=runtime.guard.trip is not None,
        )
        runtime.metrics.routed(decision.side, decision.reason)
        runtime.activity.count(decision, session_id, config.rollout, started)
        runtime.request_started()
        self.request = request
        self.runtime = runtime
        self.loop = loop
        self.session_id = session_id
        self.minted = minted
        # A minted id goes upstream in the session header, in place of any the client sent.
        self.extra = {session.header: minted} if minted else None
        self.deadline = started + config.timeouts.total
        self.fallback: FailureReason | None = None  # why signal's attempt was replayed
        # The next attempt goes on a new connection: the request met a dead pooled one.
        self.fresh = False

    def attempts(self) -> tuple[Side, ...]:
        return ATTEMPTS[self.decision.side]

    def upstream(self, side: Side) -> Upstream:
        upstreams = self.config.upstreams
        return upstreams.signal if side is Side.SIGNAL else upstreams.legacy

    def until(self, side: Side, sent: float, buffered: bool) -> float:
        """When an attempt sent at `sent` must have its response head."""
        if side is Side.SIGNAL and buffered:
            # `timeouts.signal` runs from "request sent"; a streamed upload may take long
            # to send, so it gets the total budget (it cannot be replayed anyway).
            return min(sent + self.config.timeouts.signal, self.deadline)
        return self.deadline

    def settle(
        self,
        side: Side,
        response: UpstreamResponse | None,
        error: UpstreamError | None,
        sent: float,
        buffered: bool,
    ) -> bool:
        """One attempt is over: observed (error metric, windows, guard); True when it is
        replayed on legacy (`fallback` says why, and its response is dropped)."""
        status = None if response is None else response.status
        reason = None if error is None else error.reason
        runtime = self.runtime
        runtime.observe(side, attempt_failure(reason, status), self.loop.time() - sent)
        if side is not Side.SIGNAL:
            return False
        fallback = fallback_reason(
            reason, status, self.request.method, body_buffered=buffered, config=self.config.fallback
        )
        if fallback is None:
            return False
        self.fallback = fallback
        runtime.metrics.fallback(self.decision.feature, fallback)
        if response is not None:
            response.close()
        return True

    def refuse(self, side: Side, error: UpstreamError) -> int:
        """Answer a request whose last attempt failed with the proxy's own error (SPEC 4)."""
        respond_error(self.request, error, self.fallback)
        if self.request.upgrade is not None:
            self.runtime.upgrades.counted(side, "error")
        return error.status

    def exchange(self, side: Side, body: RequestBody, response: UpstreamResponse) -> Exchange:
        """The answer `side` gave, for the relay."""
        return Exchange(
            self.request,
            self.config,
            self.decision,
            side,
            self.fallback,
            body,
            self.minted,
            response,
            self.session_id,
        )

    def end(self, outcome: Outcome | None) -> None:
        """The request left the gateway; counted and timed when it was answered."""
        runtime = self.runtime
        runtime.request_finished()
        if outcome is not None:
            side, code = outcome
            runtime.metrics.answered(
                side,
                self.decision.feature,
                self.request.method,
                code,
                self.loop.time() - self.started,
            )
