"""The status page's ring: one slot per second between two readings, a fixed capacity."""

from __future__ import annotations

import math

import pytest

from proxy.rollout.counters import Counters
from proxy.rollout.ring import RING_SECONDS, Reading, Ring, second_between

R = "local"


def reading(
    at: float,
    *,
    signal: float = 0,
    legacy: float = 0,
    signal_errors: float = 0,
    fallbacks: float = 0,
    fast: float = 0,  # legacy requests under 0.1 s, cumulative
    slow: float = 0,  # legacy requests between 0.1 s and 0.5 s
    upgraded: float = 0,
) -> Reading:
    buckets = {
        (R, "legacy", 0.1): fast,
        (R, "legacy", 0.5): fast + slow,
        (R, "legacy", math.inf): fast + slow,
    }
    counters = Counters(
        served={(R, "signal"): signal, (R, "legacy"): legacy},
        errors={(R, "signal"): signal_errors, (R, "legacy"): 0.0},
        fallbacks={R: fallbacks},
        buckets=buckets,
        guard_tripped=False,
        read_at=at,
    )
    return Reading(counters, {"signal": upgraded}, {})


@pytest.mark.parametrize(
    ("before", "after", "side", "expected"),
    [
        # signal's attempts are what it served plus what fell back to legacy
        (reading(0), reading(1, signal=8, fallbacks=2), "signal", (10, 0, 2)),
        (reading(0), reading(1, legacy=5), "legacy", (5, 0, 0)),
        (reading(0, signal=4), reading(1, signal=10, signal_errors=3), "signal", (6, 3, 0)),
        # a restart (a counter went down) counts from 0, as Prometheus' rate() does
        (reading(0, legacy=100), reading(1, legacy=7), "legacy", (7, 0, 0)),
        (reading(0), reading(1), "signal", (0, 0, 0)),
    ],
)
def test_a_second_holds_the_deltas(
    before: Reading, after: Reading, side: str, expected: tuple[int, int, int]
) -> None:
    up = second_between(before, after).upstreams[side]
    assert (up.attempts, up.errors, up.fallbacks) == expected


def test_a_second_has_quantiles_from_its_buckets_and_the_gauge_at_its_end() -> None:
    second = second_between(
        reading(10, legacy=2, fast=2), reading(12, legacy=6, fast=2, slow=4, upgraded=3)
    )
    legacy = second.upstreams["legacy"]
    assert second.seconds == 2
    assert second.at == 12
    # 4 new observations, all in (0.1, 0.5]: the median interpolates to 0.3 s
    assert legacy.p50_ms == pytest.approx(300)
    assert second.upstreams["signal"].p95_ms is None  # no observation: no figure
    assert second.upstreams["signal"].upgraded == 3


def test_the_series_are_rates_per_second_and_totals_over_the_ring() -> None:
    ring = Ring(size=10)
    ring.add(reading(0))
    ring.add(reading(2, signal=10, signal_errors=5))  # a 2 s slot: 5 req/s
    ring.add(reading(3, signal=10, signal_errors=5))  # nothing in it
    series = ring.series()
    signal = series["upstreams"]["signal"]
    assert series["at"] == [2, 3]
    assert signal["requests_per_s"] == [5.0, 0.0]
    assert signal["error_rate"] == [0.5, None]
    assert signal["requests"] == 10
    assert series["seconds"] == 10


def test_the_ring_keeps_a_fixed_number_of_slots() -> None:
    ring = Ring()
    for second in range(RING_SECONDS + 100):
        ring.add(reading(second, legacy=second))
    assert len(ring) == RING_SECONDS
    series = ring.series()
    assert len(series["at"]) == RING_SECONDS
    assert series["at"][0] == 100  # the oldest slots made room
    assert series["upstreams"]["legacy"]["requests"] == RING_SECONDS


def test_a_reading_not_later_than_the_last_adds_no_slot() -> None:
    ring = Ring()
    ring.add(reading(5, legacy=1))
    ring.add(reading(5, legacy=2))  # a clock step back or a repeated read
    assert len(ring) == 0
    assert ring.latest is not None
