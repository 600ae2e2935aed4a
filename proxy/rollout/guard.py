"""The automatic rollback guard (SPEC 7): trip rule pure, state clock-injected."""

from __future__ import annotations

import time
from dataclasses import dataclass

from proxy.config.values import GuardConfig
from proxy.rollout.window import Clock, Window, WindowStats


@dataclass(frozen=True, slots=True)
class Trip:
    reason: str
    at: float  # wall-clock seconds since the epoch
    stats: WindowStats


def trip_reason(stats: WindowStats, config: GuardConfig) -> str | None:
    """Why the guard should trip on these figures, or None. Pure."""
    if not config.enabled or stats.requests < config.min_requests:
        return None
    if stats.error_rate > config.max_error_rate:
        return (
            f"error rate {stats.error_rate:.2%} > {config.max_error_rate:.2%} "
            f"over {stats.requests} signal requests"
        )
    if stats.p95_ms is not None and stats.p95_ms > config.max_p95_ms:
        return (
            f"p95 {stats.p95_ms:.0f} ms > {config.max_p95_ms:.0f} ms "
            f"over {stats.requests} signal requests"
        )
    return None


class Guard:
    """Watches signal attempts; once tripped it holds until `rearm()`.

    The window keeps running while tripped (test sessions still reach signal), but a
    re-arm starts an empty one so the figures that caused the trip do not trip it again.
    """

    # The p95 scan walks the histogram, so it runs at most every CHECK_INTERVAL seconds or
    # CHECK_EVERY attempts, whichever comes first; the error-rate test is O(1) and runs on
    # every failed attempt.
    CHECK_INTERVAL = 0.1
    CHECK_EVERY = 64

    def __init__(
        self, config: GuardConfig, clock: Clock = time.monotonic, wall: Clock = time.time
    ) -> None:
        self.config = config
        self._clock = clock
        self._wall = wall
        self.window = Window(config.window_seconds, clock)
        self.trip: Trip | None = None
        self._next_check = 0.0
        self._unchecked = 0

    @property
    def tripped(self) -> bool:
        return self.trip is not None

    def record(self, *, ok: bool, latency_ms: float) -> Trip | None:
        """Record one signal attempt; return the Trip if this attempt tripped the guard."""
        self.window.record(ok=ok, latency_ms=latency_ms)
        if self.trip is not None or not self.config.enabled:
            return None
        self._unchecked += 1
        now = self._clock()
        if ok and now < self._next_check and self._unchecked < self.CHECK_EVERY:
            return None
        if not ok and now < self._next_check and self._unchecked < self.CHECK_EVERY:
            requests, errors = self.window.totals()
            if (
                requests < self.config.min_requests
                or errors <= self.config.max_error_rate * requests
            ):
                return None
        self._next_check = now + self.CHECK_INTERVAL
        self._unchecked = 0
        stats = self.window.stats()
        reason = trip_reason(stats, self.config)
        if reason is None:
            return None
        self.trip = Trip(reason=reason, at=self._wall(), stats=stats)
        return self.trip

    def rearm(self) -> None:
        """Clear a trip and start an empty window (on reset, or any applied reload)."""
        self.window.clear()
        self.trip = None
        self._next_check = 0.0
        self._unchecked = 0

    def reconfigure(self, config: GuardConfig) -> None:
        """New thresholds; the window survives unless its length changed."""
        if config.window_seconds != self.config.window_seconds:
            self.window = Window(config.window_seconds, self._clock)
        self.config = config
