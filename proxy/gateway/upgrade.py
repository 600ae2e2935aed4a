"""Upgraded connections (SPEC 12): admit the handshake, switch on a 101, drain.

The handshake is a request like any other (routed, attempted, falling back as a GET
does, observed by the guard). This module adds what happens around it:
- `Upgrades.refusal` answers before any attempt when upgrades are off (501) or the
  process is at `upgrade.max_connections` (503);
- `switching` wraps the relay, as the shadow does: a `101` from the upstream becomes a
  `Tunnel` between the client's and the upstream's connections; any other answer to a
  handshake is relayed as a normal response;
- `Upgrades` keeps the open tunnels with what routed them, so that a change which now
  sends a session from signal to legacy closes its connection (close code 1012), and a
  shutdown closes the rest (1001).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass

from proxy.config.values import Config, UpgradeConfig
from proxy.gateway.headers import added_headers, switch_headers
from proxy.gateway.relay import Exchange, Relay, Sink
from proxy.http.request import Request
from proxy.http.tunnel import Tunnel
from proxy.http.websocket import GOING_AWAY, SERVICE_RESTART
from proxy.rollout.drain import DrainReason, drain_reason
from proxy.rollout.routing import Side
from proxy.telemetry.metrics import Metrics

log = logging.getLogger("rollout.upgrade")


@dataclass(frozen=True, slots=True)
class _Route:
    """What routed an open tunnel: enough to decide again after a change."""

    side: Side
    session_id: str | None  # in memory only: never logged, never a label
    path: str


class Upgrades:
    """The process's open upgraded connections."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._open: dict[Tunnel, _Route] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._open)

    def count(self, side: Side) -> int:
        return sum(1 for route in self._open.values() if route.side is side)

    # --- the handshake -------------------------------------------------------------------

    def refusal(self, config: UpgradeConfig, request: Request, side: Side) -> int | None:
        """Answer a handshake that must not be attempted: the status, else None."""
        if not config.enabled or not request.upgrade:
            detail = (
                "upgrades are disabled (upgrade.enabled: false)"
                if not config.enabled
                else "an upgrade request with a body is not supported"
            )
            self.counted(side, "refused")
            request.keep_alive = False
            request.respond_json(501, {"error": detail, "upstream": None})
            return 501
        if len(self._open) >= config.max_connections:
            self.counted(side, "limit")
            log.warning(
                "refused an upgrade: %d upgraded connections open (upgrade.max_connections)",
                len(self._open),
            )
            request.keep_alive = False
            request.respond_json(
                503,
                {"error": "too many upgraded connections", "upstream": None},
                [("Retry-After", "1")],
            )
            return 503
        return None

    def counted(self, side: Side, result: str) -> None:
        self._metrics.upgrades.labels(upstream=side.value, result=result).inc()

    def switch(self, exchange: Exchange, session_id: str | None) -> int:
        """The upstream answered 101: tell the client, then relay bytes both ways."""
        request, response, side = exchange.request, exchange.response, exchange.side
        config = exchange.config
        added = added_headers(side, exchange.fallback, config.session.cookie, exchange.minted)
        headers = switch_headers(response.headers, added)
        websocket = "websocket" in (request.upgrade or "").lower()
        metrics = self._metrics
        up = metrics.upgraded_bytes.labels(upstream=side.value, direction="upstream")
        down = metrics.upgraded_bytes.labels(upstream=side.value, direction="downstream")
        upstream_end = response.detach()
        client_end = request.switch_protocols(response.reason or "Switching Protocols", headers)
        tunnel = Tunnel(
            client_end,
            upstream_end,
            idle_timeout=config.upgrade.idle_timeout,
            websocket=websocket,
            count_up=up.inc,
            count_down=down.inc,
            on_closed=self._closed,
        )
        if not tunnel.done:
            self._open[tunnel] = _Route(side, session_id, request.target.partition("?")[0])
            self._empty.clear()
            metrics.upgraded.labels(upstream=side.value).inc()
        self.counted(side, "switched")
        return 101

    def _closed(self, tunnel: Tunnel) -> None:
        route = self._open.pop(tunnel, None)
        if route is not None:
            self._metrics.upgraded.labels(upstream=route.side.value).dec()
        if not self._open:
            self._empty.set()

    # --- closing them --------------------------------------------------------------------

    def drain_moved(self, config: Config, *, guard_tripped: bool) -> int:
        """Close the connections whose session routing now sends elsewhere (SPEC 12)."""
        if not config.upgrade.drain_on_rollback:
            return 0
        closed = 0
        for tunnel, route in list(self._open.items()):
            reason = drain_reason(
                config.rollout,
                route.side,
                route.session_id,
                route.path,
                guard_tripped=guard_tripped,
            )
            if reason is not None and not tunnel.closed_by_us:
                self._drain(tunnel, SERVICE_RESTART, reason)
                closed += 1
        if closed:
            log.warning("closing %d upgraded connections to signal: routing moved them", closed)
        return closed

    def close_all(self) -> int:
        """Shutdown: every open connection gets close code 1001."""
        tunnels = list(self._open)
        for tunnel in tunnels:
            self._drain(tunnel, GOING_AWAY, DrainReason.SHUTDOWN)
        return len(tunnels)

    def _drain(self, tunnel: Tunnel, code: int, reason: DrainReason) -> None:
        self._metrics.upgraded_drained.labels(reason=reason.value).inc()
        tunnel.close(code, reason.value)

    async def wait_closed(self, timeout: float) -> bool:
        """Until every tunnel has closed; False if `timeout` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._empty.wait()
        except TimeoutError:
            return False
        return True

    def abort_all(self) -> None:
        for tunnel in list(self._open):
            tunnel.abort()


def switching(relay: Relay, upgrades: Upgrades) -> Relay:
    """`relay`, plus the switch to a tunnel when an upgrade handshake is answered 101."""

    def relay_or_switch(exchange: Exchange, sink: Sink) -> Awaitable[int]:
        if exchange.request.upgrade is None:
            return relay(exchange, sink)
        return _handshake(exchange, sink)

    async def _handshake(exchange: Exchange, sink: Sink) -> int:
        response = exchange.response
        if response.switched:
            return upgrades.switch(exchange, exchange.session_id)
        if response.status == 101:
            upgrades.counted(exchange.side, "error")
            # A 101 without `Upgrade`: not a switch llhttp can follow, nor an answer.
            response.close()
            request = exchange.request
            request.keep_alive = False
            request.respond_json(
                502, {"error": "invalid switch from upstream", "upstream": exchange.side.value}
            )
            return 502
        upgrades.counted(exchange.side, "refused")
        return await relay(exchange, sink)

    return relay_or_switch
