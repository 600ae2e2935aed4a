"""proxy.rollout.guard: the pure trip rule (table-driven) and the clock-injected Guard (SPEC 7)."""

from __future__ import annotations

import dataclasses

import pytest

from proxy.config.values import GuardConfig
from proxy.rollout.guard import Guard, Trip, trip_reason
from proxy.rollout.window import WindowStats

CONFIG = GuardConfig(
    enabled=True, window_seconds=60, min_requests=50, max_error_rate=0.05, max_p95_ms=500.0
)
WALL = 1_700_000_000.0


class FakeClock:
    """Seconds that only move when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def stats(requests: int = 100, errors: int = 0, p95_ms: float | None = 100.0) -> WindowStats:
    return WindowStats(
        requests=requests,
        errors=errors,
        error_rate=errors / requests if requests else 0.0,
        p50_ms=None if p95_ms is None else p95_ms / 2,
        p95_ms=p95_ms,
        p99_ms=p95_ms,
    )


# --- trip_reason: pure, one row per case ---------------------------------------------

# (case, stats, config, None or the fragments the reason must contain)
TRIP_TABLE: list[tuple[str, WindowStats, GuardConfig, tuple[str, ...] | None]] = [
    ("healthy", stats(), CONFIG, None),
    ("empty window", stats(requests=0, p95_ms=None), CONFIG, None),
    (
        "100 % errors below min_requests",
        stats(requests=49, errors=49, p95_ms=120_000.0),
        CONFIG,
        None,
    ),
    (
        "at min_requests, all errors",
        stats(requests=50, errors=50),
        CONFIG,
        ("error rate 100.00% > 5.00%", "over 50 signal requests"),
    ),
    ("error rate exactly at the limit", stats(requests=100, errors=5), CONFIG, None),
    ("error rate just under", stats(requests=1000, errors=49), CONFIG, None),
    (
        "error rate just over",
        stats(requests=100, errors=6),
        CONFIG,
        ("error rate 6.00% > 5.00%", "over 100 signal requests"),
    ),
    (
        "error rate over by a hair",
        stats(requests=10_000, errors=501),
        CONFIG,
        ("error rate 5.01% > 5.00%", "over 10000 signal requests"),
    ),
    ("p95 exactly at the limit", stats(p95_ms=500.0), CONFIG, None),
    (
        "p95 just over",
        stats(p95_ms=509.458),
        CONFIG,
        ("p95 509 ms > 500 ms", "over 100 signal requests"),
    ),
    ("p95 unknown", stats(requests=100, p95_ms=None), CONFIG, None),
    (
        "both over: the error rate is reported",
        stats(requests=200, errors=100, p95_ms=9000.0),
        CONFIG,
        ("error rate 50.00% > 5.00%", "over 200 signal requests"),
    ),
    (
        "disabled, both over",
        stats(requests=200, errors=200, p95_ms=9000.0),
        dataclasses.replace(CONFIG, enabled=False),
        None,
    ),
    (
        "min_requests 1, one error",
        stats(requests=1, errors=1),
        dataclasses.replace(CONFIG, min_requests=1),
        ("error rate 100.00% > 5.00%", "over 1 signal requests"),
    ),
    (
        "max_error_rate 0: any error trips",
        stats(requests=100, errors=1),
        dataclasses.replace(CONFIG, max_error_rate=0.0),
        ("error rate 1.00% > 0.00%",),
    ),
    ("max_error_rate 0, no errors", stats(), dataclasses.replace(CONFIG, max_error_rate=0.0), None),
    (
        "max_error_rate 1 never trips on errors",
        stats(requests=100, errors=100),
        dataclasses.replace(CONFIG, max_error_rate=1.0),
        None,
    ),
    (
        "p95 over a 200 ms limit",
        stats(p95_ms=202.313),
        dataclasses.replace(CONFIG, max_p95_ms=200.0),
        ("p95 202 ms > 200 ms",),
    ),
    (
        "p95 at a 200 ms limit",
        stats(p95_ms=200.0),
        dataclasses.replace(CONFIG, max_p95_ms=200.0),
        None,
    ),
]


@pytest.mark.parametrize(
    ("window", "config", "fragments"),
    [row[1:] for row in TRIP_TABLE],
    ids=[row[0] for row in TRIP_TABLE],
)
def test_trip_reason(
    window: WindowStats, config: GuardConfig, fragments: tuple[str, ...] | None
) -> None:
    reason = trip_reason(window, config)
    if fragments is None:
        assert reason is None
    else:
        assert reason is not None
        for fragment in fragments:
            assert fragment in reason


def test_trip_reason_is_pure() -> None:
    window = stats(requests=100, errors=6)
    before = dataclasses.astuple(window)
    first = trip_reason(window, CONFIG)
    assert first is not None
    assert [trip_reason(window, CONFIG) for _ in range(3)] == [first] * 3
    assert dataclasses.astuple(window) == before
    assert trip_reason(stats(), CONFIG) is None  # a healthy call right after is unaffected


# --- Guard: driven by a fake clock ---------------------------------------------------


def make_guard(config: GuardConfig = CONFIG, now: float = 1000.0) -> tuple[Guard, FakeClock]:
    clock = FakeClock(now)
    return Guard(config, clock=clock, wall=lambda: WALL), clock


def feed(
    guard: Guard, clock: FakeClock, count: int, *, ok: bool = True, latency_ms: float = 20.0
) -> list[Trip]:
    """Record `count` attempts, one check interval apart so every one is checked."""
    trips = []
    for _ in range(count):
        trip = guard.record(ok=ok, latency_ms=latency_ms)
        if trip is not None:
            trips.append(trip)
        clock.advance(Guard.CHECK_INTERVAL)
    return trips


def test_below_min_requests_never_trips_even_at_100_percent_errors() -> None:
    guard, clock = make_guard()
    assert feed(guard, clock, CONFIG.min_requests - 1, ok=False, latency_ms=60_000.0) == []
    assert not guard.tripped
    assert guard.trip is None
    assert guard.window.stats().errors == CONFIG.min_requests - 1
    # The attempt that reaches min_requests is the one that trips.
    assert len(feed(guard, clock, 1, ok=False)) == 1
    assert guard.tripped


def test_error_rate_exactly_at_the_limit_does_not_trip() -> None:
    guard, clock = make_guard()
    feed(guard, clock, 95)
    feed(guard, clock, 5, ok=False)  # 5 / 100 = 0.05, not above 0.05
    assert guard.window.stats().error_rate == CONFIG.max_error_rate
    assert not guard.tripped


def test_error_rate_above_the_limit_trips_with_the_figures() -> None:
    guard, clock = make_guard()
    feed(guard, clock, 95)
    assert feed(guard, clock, 5, ok=False) == []  # 5 / 100: at the limit
    trips = feed(guard, clock, 1, ok=False)  # 6 / 101: over it
    assert len(trips) == 1
    trip = trips[0]
    assert guard.trip is trip
    assert trip.at == WALL
    assert (trip.stats.requests, trip.stats.errors) == (101, 6)
    assert "error rate 5.94% > 5.00%" in trip.reason
    assert "over 101 signal requests" in trip.reason


def test_p95_above_the_limit_trips() -> None:
    guard, clock = make_guard()
    feed(guard, clock, 95, latency_ms=40.0)
    assert feed(guard, clock, 5, latency_ms=501.0) == []  # 5 % above 500 ms: p95 <= 500
    assert not guard.tripped
    trips = feed(guard, clock, 1, latency_ms=501.0)  # 6 of 101 are above
    assert len(trips) == 1
    assert trips[0].stats.p95_ms is not None
    assert trips[0].stats.p95_ms > CONFIG.max_p95_ms
    assert "p95 509 ms > 500 ms" in trips[0].reason
    assert "over 101 signal requests" in trips[0].reason


def test_p95_at_or_below_the_limit_does_not_trip() -> None:
    guard, clock = make_guard()
    feed(guard, clock, 180, latency_ms=499.0)
    feed(guard, clock, 10, latency_ms=500.0)
    feed(guard, clock, 10, latency_ms=50_000.0)  # exactly 5 %, far above the limit
    assert guard.window.stats().requests == 200
    assert guard.window.stats().p95_ms == 500.0
    assert not guard.tripped


@pytest.mark.parametrize(("latency_ms", "trips"), [(199.0, False), (200.0, False), (201.0, True)])
def test_the_200_ms_edge_is_exact(latency_ms: float, trips: bool) -> None:
    guard, clock = make_guard(dataclasses.replace(CONFIG, max_p95_ms=200.0))
    feed(guard, clock, 60, latency_ms=latency_ms)
    assert guard.tripped is trips


def test_a_trip_holds_until_rearm() -> None:
    guard, clock = make_guard()
    trips = feed(guard, clock, 50, ok=False)
    assert len(trips) == 1
    trip = trips[0]

    # Healthy traffic, and the bad seconds leaving the window, do not clear it.
    assert feed(guard, clock, 500) == []
    clock.advance(3 * CONFIG.window_seconds)
    assert feed(guard, clock, 100) == []
    assert guard.window.stats().errors == 0
    assert guard.trip is trip
    assert guard.tripped

    guard.rearm()
    assert guard.trip is None
    assert not guard.tripped


def test_the_window_keeps_counting_while_tripped() -> None:
    guard, clock = make_guard()
    feed(guard, clock, 50, ok=False)
    assert guard.tripped
    feed(guard, clock, 10)
    assert guard.window.stats().requests == 60


def test_rearm_starts_an_empty_window() -> None:
    guard, clock = make_guard()
    feed(guard, clock, 50, ok=False)
    assert guard.tripped

    guard.rearm()
    assert guard.window.stats().requests == 0
    # The errors that caused the trip are gone: it takes min_requests new ones to trip again.
    assert feed(guard, clock, CONFIG.min_requests - 1, ok=False) == []
    assert not guard.tripped
    assert len(feed(guard, clock, 1, ok=False)) == 1


def test_rearm_checks_the_next_attempt_at_once() -> None:
    guard, _ = make_guard(dataclasses.replace(CONFIG, min_requests=1))
    assert guard.record(ok=True, latency_ms=900.0) is not None  # first attempt: checked
    guard.rearm()
    assert guard.record(ok=True, latency_ms=900.0) is not None  # clock has not moved


def test_reconfigure_keeps_the_window_and_applies_new_thresholds() -> None:
    guard, clock = make_guard()
    feed(guard, clock, 97)
    feed(guard, clock, 3, ok=False)  # 3 %: healthy under 5 %
    window = guard.window
    assert not guard.tripped

    guard.reconfigure(dataclasses.replace(CONFIG, max_error_rate=0.02))
    assert guard.window is window
    assert guard.window.stats().requests == 100
    assert guard.config.max_error_rate == 0.02
    trips = feed(guard, clock, 1)  # 3 / 101 > 2 %
    assert len(trips) == 1
    assert "2.00%" in trips[0].reason


def test_reconfigure_with_a_new_window_length_starts_a_new_window() -> None:
    guard, clock = make_guard()
    feed(guard, clock, 40, ok=False)
    guard.reconfigure(dataclasses.replace(CONFIG, window_seconds=10))
    assert guard.window.seconds == 10
    assert guard.window.stats().requests == 0
    # The new window runs on the same clock.
    feed(guard, clock, 5)
    assert guard.window.stats().requests == 5
    clock.advance(10)
    assert guard.window.stats().requests == 0


def test_a_disabled_guard_never_trips() -> None:
    guard, clock = make_guard(dataclasses.replace(CONFIG, enabled=False))
    assert feed(guard, clock, 1000, ok=False, latency_ms=90_000.0) == []
    assert not guard.tripped
    stats_now = guard.window.stats()
    assert 500 < stats_now.requests <= 600  # the last minute at 10 attempts a second
    assert stats_now.errors == stats_now.requests


def test_enabling_a_guard_by_reconfigure_trips_on_the_next_check() -> None:
    guard, clock = make_guard(dataclasses.replace(CONFIG, enabled=False))
    feed(guard, clock, 60, ok=False)
    assert not guard.tripped
    guard.reconfigure(CONFIG)
    assert len(feed(guard, clock, 1, ok=False)) == 1


def test_the_p95_check_is_throttled_until_the_clock_advances() -> None:
    guard, clock = make_guard(dataclasses.replace(CONFIG, min_requests=10))
    start = clock.now
    assert guard.record(ok=True, latency_ms=5.0) is None  # checked: below min_requests
    # The clock stands still: slow attempts are recorded but the p95 is not looked at.
    for _ in range(20):
        assert guard.record(ok=True, latency_ms=900.0) is None
    window = guard.window.stats()
    assert window.p95_ms is not None
    assert window.p95_ms > CONFIG.max_p95_ms
    assert not guard.tripped

    clock.now = start + Guard.CHECK_INTERVAL / 2
    assert guard.record(ok=True, latency_ms=900.0) is None
    assert not guard.tripped

    clock.now = start + Guard.CHECK_INTERVAL
    trip = guard.record(ok=True, latency_ms=900.0)
    assert trip is not None
    assert trip.stats.requests == 23
    assert "p95" in trip.reason
    assert guard.trip is trip


def test_the_p95_check_also_runs_every_check_every_attempts() -> None:
    guard, _ = make_guard(dataclasses.replace(CONFIG, min_requests=10))
    assert guard.record(ok=True, latency_ms=5.0) is None  # checked: below min_requests
    results = [guard.record(ok=True, latency_ms=900.0) for _ in range(2 * Guard.CHECK_EVERY)]
    assert results[: Guard.CHECK_EVERY - 1] == [None] * (Guard.CHECK_EVERY - 1)
    assert results[Guard.CHECK_EVERY - 1] is not None
    assert results[Guard.CHECK_EVERY - 1] is guard.trip


def test_a_failed_attempt_also_runs_a_due_p95_check() -> None:
    guard, clock = make_guard(dataclasses.replace(CONFIG, min_requests=10))
    start = clock.now
    guard.record(ok=True, latency_ms=5.0)
    for _ in range(20):
        guard.record(ok=True, latency_ms=900.0)
    assert not guard.tripped
    clock.now = start + Guard.CHECK_INTERVAL
    trip = guard.record(ok=False, latency_ms=900.0)  # 1 error in 22: under the error limit
    assert trip is not None
    assert "p95" in trip.reason


def test_an_error_trip_is_not_throttled() -> None:
    guard, _ = make_guard()
    # The clock stands still; the error-rate test runs on every failed attempt.
    results = [guard.record(ok=False, latency_ms=1.0) for _ in range(CONFIG.min_requests)]
    assert results[:-1] == [None] * (CONFIG.min_requests - 1)
    assert results[-1] is not None
    assert results[-1] is guard.trip
    assert "error rate 100.00% > 5.00% over 50 signal requests" in results[-1].reason


def test_a_trip_is_returned_once() -> None:
    guard, clock = make_guard()
    results = []
    for _ in range(3):
        results += [guard.record(ok=False, latency_ms=900.0) for _ in range(100)]
        clock.advance(1)
    trips = [result for result in results if result is not None]
    assert len(trips) == 1
    assert trips[0] is guard.trip


def test_the_window_forgets_old_failures_before_min_requests_is_reached() -> None:
    guard, clock = make_guard()
    feed(guard, clock, 40, ok=False)
    clock.advance(CONFIG.window_seconds)
    assert feed(guard, clock, 40, ok=False) == []  # 40 in the window, not 80
    assert not guard.tripped
