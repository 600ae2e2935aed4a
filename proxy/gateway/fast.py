"""The handler's fast path: a request carried by callbacks, with no task, future or timer
of its own (bench/RESULTS.md, issue 19: that machinery, not the features, was most of
what a request cost).

Taken for the common case only: a request without a body, not an upgrade, shadow off (so
the relay's wrappers have nothing to do), and an idle pooled connection to the chosen
upstream. The request goes out from the server's parser callback and is answered from
the upstream connection's. Whatever has to wait is handed to the coroutine path where it
stands: a body to stream (the relay), a fallback (the next attempt), a pooled connection
found dead (the same attempt on a fresh one). Routing, settling an attempt and ending a
request are `Flight`'s, heads are `headers.py`'s and the one-write answer is
`relay_complete`: one implementation of each rule, whichever path runs it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from proxy.errors import UpstreamError, UpstreamResetError
from proxy.gateway.attempt import NO_BODY, upstream_head
from proxy.gateway.flight import Flight
from proxy.gateway.relay import Exchange, Relay, relay_complete
from proxy.http.client import Connection, UpstreamResponse, retry_on_fresh
from proxy.rollout.routing import Side

# The coroutine path, from an attempt number or from the relay of an answer.
Carry = Callable[[Flight, Relay, int, Exchange | None], Awaitable[None]]


def carry(flight: Flight, relay: Relay, rest: Carry) -> bool:
    """Take the request on by callbacks if it is the common case; False if it is not
    (nothing has been done then)."""
    request = flight.request
    if request.body is not None or request.upgrade is not None or flight.config.shadow.enabled:
        return False
    side = flight.decision.side
    upstream = flight.upstream(side)
    conn = flight.runtime.pool(upstream).take_idle()
    if conn is None:
        return False
    attempt = _Attempt(flight, relay, rest, side, conn)
    head, _ = upstream_head(request, upstream, NO_BODY, flight.extra)
    attempt.sent = sent = flight.loop.time()
    conn.send(request.method, head, flight.until(side, sent, True), attempt.answered)
    return True


class _Attempt:
    """The first attempt of a request, sent on a pooled connection."""

    __slots__ = ("conn", "flight", "relay", "rest", "sent", "side")

    def __init__(
        self, flight: Flight, relay: Relay, rest: Carry, side: Side, conn: Connection
    ) -> None:
        self.flight = flight
        self.relay = relay
        self.rest = rest
        self.side = side
        self.conn = conn
        self.sent = 0.0

    def answered(self) -> None:
        """The connection has the response head, or the attempt failed."""
        flight, side = self.flight, self.side
        request = flight.request
        try:
            response: UpstreamResponse | None = None
            error: UpstreamError | None = None
            try:
                response = self.conn.response()
            except UpstreamError as err:
                error = err
                if isinstance(err, UpstreamResetError) and retry_on_fresh(
                    self.conn, request.method, None
                ):
                    # As `Pool.request` would: not an attempt that counts, just again,
                    # on a new connection (once: never on a second pooled one).
                    self.conn.abort()
                    flight.fresh = True
                    request.run(self.rest(flight, self.relay, 0, None))
                    return
            if flight.settle(side, response, error, self.sent, True):
                request.run(self.rest(flight, self.relay, 1, None))
                return
            if response is None:
                assert error is not None
                flight.end((side, flight.refuse(side, error)))
                return
            exchange = flight.exchange(side, NO_BODY, response)
            status = relay_complete(exchange, request)
            if status is None:
                request.run(self.rest(flight, self.relay, 0, exchange))
                return
            flight.end((side, status))
        except Exception:
            request.failed()
            flight.end(None)
