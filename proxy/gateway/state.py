"""State that lives as long as the process: config store, pools, metrics, guard, windows.

A reload swaps only `store.config`; everything here survives it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from proxy.config.tls import client_context
from proxy.config.values import Config, Upstream, UpstreamTLS
from proxy.errors import FailureReason
from proxy.gateway.activity import Activity
from proxy.gateway.shadow import Shadow
from proxy.gateway.upgrade import Upgrades
from proxy.http.client import Pool
from proxy.rollout.guard import Guard
from proxy.rollout.routing import Side
from proxy.rollout.window import Window
from proxy.telemetry.metrics import Metrics

log = logging.getLogger("rollout.guard")
upstream_log = logging.getLogger("rollout.upstream")

# Close idle upstream connections before a typical upstream's own keep-alive timeout
# (nginx and aiohttp: 75 s), so a pooled connection is rarely found dead.
UPSTREAM_KEEPALIVE_SECONDS = 15.0


def warn_unverified(config: Config) -> None:
    """At every load (start and each reload): an upstream reached without verifying its
    certificate is one WARNING line, so it is never forgotten in production."""
    for upstream in (config.upstreams.signal, config.upstreams.legacy):
        if upstream.tls is not None and not upstream.tls.verify:
            upstream_log.warning(
                "%s: tls.verify is false: the certificate of %s is not checked "
                "(anyone on the path can impersonate it)",
                upstream.name,
                upstream.url,
            )


PoolKey = tuple[str, UpstreamTLS | None]


def pool_key(upstream: Upstream) -> PoolKey:
    return upstream.url, upstream.tls


@dataclass(eq=False)
class ConfigStore:
    """The current configuration and its provenance; replaced in one assignment."""

    path: Path
    config: Config
    generation: int = 1
    last_reload_ok: bool = True
    last_error: str | None = None
    last_reload_at: float = field(default_factory=time.time)
    last_changes: list[str] = field(default_factory=list)


@dataclass(eq=False)
class Runtime:
    store: ConfigStore
    metrics: Metrics
    guard: Guard
    legacy_window: Window
    upgrades: Upgrades
    activity: Activity  # recent requests by bucket, for the who-moves preview
    pools: dict[PoolKey, Pool] = field(default_factory=dict)
    shadow: Shadow = field(default_factory=Shadow)
    draining: bool = False
    active: int = 0  # requests in the gateway now (the drain waits for 0)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = field(default_factory=time.time)
    # Run after every reload that read a valid file (applied or not): e.g. the listen
    # certificate's files are checked again.
    after_reload: list[Callable[[], object]] = field(default_factory=list)

    @classmethod
    def create(cls, store: ConfigStore, version: str) -> Runtime:
        config = store.config
        metrics = Metrics(version)
        runtime = cls(
            store=store,
            metrics=metrics,
            guard=Guard(config.guard),
            legacy_window=Window(config.guard.window_seconds),
            upgrades=Upgrades(metrics),
            activity=Activity(config, time.monotonic()),
        )
        warn_unverified(config)
        runtime.metrics.apply_config(config, guard_tripped=False)
        runtime.metrics.count_in_flight(lambda: runtime.active)
        runtime.shadow.configure(config.shadow)
        return runtime

    def request_started(self) -> None:
        self.active += 1
        if self.active == 1:
            self._idle.clear()
        if self.metrics.in_flight_per_request:
            self.metrics.in_flight.inc()

    def request_finished(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()
        if self.metrics.in_flight_per_request:
            self.metrics.in_flight.dec()

    async def wait_idle(self, timeout: float) -> bool:
        """Until no request is in flight; False if `timeout` passed first."""
        if self.active == 0:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def pool(self, upstream: Upstream) -> Pool:
        """The connection pool for an upstream's URL and TLS values: a reload that changes
        either gets a new pool (and SSL context), one that changes neither keeps the
        pooled connections."""
        key = pool_key(upstream)
        pool = self.pools.get(key)
        if pool is None:
            context = upstream.ssl_context
            if context is None and upstream.https:
                context = client_context(upstream.tls or UpstreamTLS())
            pool = self.pools[key] = Pool(
                upstream.name,
                upstream.host,
                upstream.port,
                ssl=context,
                server_name=upstream.server_name,
                keepalive_timeout=UPSTREAM_KEEPALIVE_SECONDS,
            )
        return pool

    def close_pools(self, keep: set[PoolKey] | None = None) -> None:
        for key in list(self.pools):
            if keep is None or key not in keep:
                self.pools.pop(key).close()

    def guard_tripped(self) -> bool:
        return self.guard.trip is not None

    def window(self, side: Side) -> Window:
        return self.guard.window if side is Side.SIGNAL else self.legacy_window

    def observe(self, side: Side, failure: FailureReason | None, seconds: float) -> None:
        """One attempt's outcome: the upstream error metric, the windows; signal's also
        feed the guard."""
        ok = failure is None
        if failure is not None:
            self.metrics.upstream_error(side, failure)
        if side is Side.LEGACY:
            self.legacy_window.record(ok=ok, latency_ms=seconds * 1000)
            return
        trip = self.guard.record(ok=ok, latency_ms=seconds * 1000)
        if trip is not None:
            log.error(
                "guard tripped: %s; every session except test sessions now goes to legacy "
                "(re-arm: edit the config or POST /-/guard/reset)",
                trip.reason,
            )
            self.metrics.apply_config(self.store.config, guard_tripped=True)
            self.upgrades.drain_moved(self.store.config, guard_tripped=True)

    def config_applied(self, config: Config) -> None:
        """After a reload was applied: re-arm a tripped guard, refresh gauges."""
        self.guard.reconfigure(config.guard)
        if self.guard.trip is not None:
            log.warning("guard re-armed by configuration change")
            self.guard.rearm()
        # Idle connections to an upstream that is no longer configured are closed; requests
        # still running on them finish first.
        self.close_pools(
            keep={pool_key(config.upstreams.signal), pool_key(config.upstreams.legacy)}
        )
        if config.guard.window_seconds != self.legacy_window.seconds:
            self.legacy_window = Window(config.guard.window_seconds)
        self.shadow.configure(config.shadow)
        self.activity.configure(config)
        self.metrics.apply_config(config, guard_tripped=self.guard_tripped())
        self.upgrades.drain_moved(config, guard_tripped=self.guard_tripped())

    def reset_guard(self) -> bool:
        """POST /-/guard/reset; returns whether it was tripped."""
        was = self.guard.trip is not None
        self.guard.rearm()
        self.metrics.apply_config(self.store.config, guard_tripped=False)
        if was:
            log.warning("guard re-armed by POST /-/guard/reset")
        return was


RUNTIME = web.AppKey("runtime", Runtime)
