"""proxy.rollout.window: expiry, exact criteria edges, quantile accuracy, bounded memory."""

from __future__ import annotations

import gc
import itertools
import math
import random
import sys
import tracemalloc
import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.rollout.window import EDGES_MS, Window, WindowStats

# Consecutive edges grow by 8 %; rounding to 3 decimals widens the first few a little.
RESOLUTION = 1.082


class FakeClock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def true_quantile(samples: list[float], q: float) -> float:
    """The nearest-rank quantile the window approximates: the ceil(q*n)-th smallest sample."""
    ordered = sorted(samples)
    return ordered[math.ceil(q * len(ordered)) - 1]


def window_of(latencies: list[float], seconds: int = 60) -> Window:
    window = Window(seconds, FakeClock())
    for latency in latencies:
        window.record(ok=True, latency_ms=latency)
    return window


# --- the histogram edges -------------------------------------------------------------


def test_edges_are_sorted_and_include_the_criteria_exactly() -> None:
    assert list(EDGES_MS) == sorted(set(EDGES_MS))
    assert 200.0 in EDGES_MS
    assert 500.0 in EDGES_MS
    assert EDGES_MS[0] <= 0.5
    assert EDGES_MS[-1] >= 120_000


def test_edges_are_at_most_8_percent_apart() -> None:
    assert max(b / a for a, b in itertools.pairwise(EDGES_MS)) <= RESOLUTION


# --- empty window and counting -------------------------------------------------------


def test_empty_window_has_zero_figures_and_no_quantiles() -> None:
    stats = Window(60, FakeClock()).stats()
    assert stats == WindowStats(
        requests=0, errors=0, error_rate=0.0, p50_ms=None, p95_ms=None, p99_ms=None
    )


def test_counts_requests_errors_and_rate() -> None:
    clock = FakeClock()
    window = Window(60, clock)
    for i in range(40):
        window.record(ok=i % 4 != 0, latency_ms=10.0)
        clock.advance(0.25)
    stats = window.stats()
    assert stats.requests == 40
    assert stats.errors == 10
    assert stats.error_rate == pytest.approx(0.25)


def test_as_dict_rounds_for_display() -> None:
    stats = WindowStats(
        requests=3, errors=1, error_rate=1 / 3, p50_ms=10.123456, p95_ms=None, p99_ms=202.313
    )
    assert stats.as_dict() == {
        "requests": 3,
        "errors": 1,
        "error_rate": 0.333333,
        "p50_ms": 10.12,
        "p95_ms": None,
        "p99_ms": 202.31,
    }


# --- the sliding window --------------------------------------------------------------


def test_samples_older_than_the_window_are_forgotten() -> None:
    clock = FakeClock(100.0)
    window = Window(60, clock)
    for _ in range(500):
        window.record(ok=False, latency_ms=900.0)
    clock.advance(59.999)
    assert window.stats().requests == 500
    clock.advance(0.001)  # second 160: second 100 has left the window
    assert window.stats() == WindowStats(
        requests=0, errors=0, error_rate=0.0, p50_ms=None, p95_ms=None, p99_ms=None
    )


def test_window_forgets_after_a_long_idle_gap() -> None:
    clock = FakeClock()
    window = Window(10, clock)
    for _ in range(100):
        window.record(ok=False, latency_ms=50.0)
    clock.advance(1_000_000)
    assert window.stats().requests == 0
    window.record(ok=True, latency_ms=5.0)
    stats = window.stats()
    assert (stats.requests, stats.errors) == (1, 0)
    assert stats.p99_ms is not None
    assert stats.p99_ms < 10


def test_partial_expiry_keeps_the_newer_seconds() -> None:
    clock = FakeClock(0.0)
    window = Window(10, clock)
    # Second s: one attempt at 10*(s+1) ms, errors in the first five seconds only.
    for second in range(10):
        clock.now = second + 0.5
        window.record(ok=second >= 5, latency_ms=10.0 * (second + 1))
    assert window.stats().requests == 10

    clock.now = 14.2  # the window now holds seconds 5..14
    stats = window.stats()
    assert stats.requests == 5
    assert stats.errors == 0
    assert stats.error_rate == 0.0
    assert stats.p50_ms is not None
    assert 80.0 <= stats.p50_ms <= 80.0 * RESOLUTION  # samples 60..100, median 80
    assert stats.p99_ms is not None
    assert 100.0 <= stats.p99_ms <= 100.0 * RESOLUTION


def test_a_reused_ring_slot_drops_its_old_second() -> None:
    clock = FakeClock(0.0)
    window = Window(10, clock)
    for _ in range(7):
        window.record(ok=False, latency_ms=3000.0)
    clock.now = 10.0  # same ring slot as second 0, which is now outside the window
    window.record(ok=True, latency_ms=1.0)
    stats = window.stats()
    assert (stats.requests, stats.errors) == (1, 0)
    assert stats.p99_ms is not None
    assert stats.p99_ms < 2


def test_records_within_one_second_accumulate_in_one_slot() -> None:
    clock = FakeClock(7.0)
    window = Window(1, clock)
    for i in range(10):
        clock.now = 7.0 + i / 10
        window.record(ok=False, latency_ms=1.0)
    assert window.stats().requests == 10
    clock.now = 8.0
    assert window.stats().requests == 0


def test_clear_empties_the_window_and_recording_resumes() -> None:
    clock = FakeClock()
    window = Window(60, clock)
    for _ in range(30):
        window.record(ok=False, latency_ms=700.0)
        clock.advance(0.5)
    window.clear()
    assert window.stats().requests == 0
    window.record(ok=True, latency_ms=20.0)
    clock.advance(1)
    window.record(ok=False, latency_ms=20.0)
    stats = window.stats()
    assert (stats.requests, stats.errors) == (2, 1)
    # Expiring the slots that clear() emptied must not subtract their old counts again.
    clock.advance(59)
    assert window.stats().requests == 1
    clock.advance(1)
    assert window.stats().requests == 0


# --- the 200 ms and 500 ms criteria are exact ----------------------------------------


@pytest.mark.parametrize(
    ("latency_ms", "limit", "above"),
    [
        (199.0, 200.0, False),
        (199.999, 200.0, False),
        (200.0, 200.0, False),
        (200.001, 200.0, True),
        (201.0, 200.0, True),
        (499.0, 500.0, False),
        (500.0, 500.0, False),
        (500.001, 500.0, True),
        (501.0, 500.0, True),
    ],
)
def test_p95_is_exact_at_the_criteria(latency_ms: float, limit: float, above: bool) -> None:
    stats = window_of([latency_ms] * 100).stats()
    assert stats.p95_ms is not None
    assert (stats.p95_ms > limit) is above


@pytest.mark.parametrize("limit", [200.0, 500.0])
def test_p95_exceeds_the_limit_only_when_more_than_5_percent_are_above(limit: float) -> None:
    at_5_percent = window_of([limit - 1] * 95 + [limit + 1] * 5).stats()
    above_5_percent = window_of([limit - 1] * 94 + [limit + 1] * 6).stats()
    assert at_5_percent.p95_ms == limit
    assert above_5_percent.p95_ms is not None
    assert above_5_percent.p95_ms > limit


# --- quantile accuracy ---------------------------------------------------------------


def assert_quantiles_close(samples: list[float], stats: WindowStats) -> None:
    for q, reported in ((0.50, stats.p50_ms), (0.95, stats.p95_ms), (0.99, stats.p99_ms)):
        true = true_quantile(samples, q)
        assert reported is not None
        assert true <= reported <= true * RESOLUTION, (q, true, reported)


def test_quantiles_of_a_uniform_distribution() -> None:
    samples = [float(ms) for ms in range(1, 1001)]
    stats = window_of(samples).stats()
    assert (true_quantile(samples, 0.5), true_quantile(samples, 0.95)) == (500.0, 950.0)
    assert true_quantile(samples, 0.99) == 990.0
    assert_quantiles_close(samples, stats)


def test_quantiles_of_a_seeded_lognormal_distribution() -> None:
    rng = random.Random(20240607)
    samples = [rng.lognormvariate(math.log(80), 0.9) for _ in range(20_000)]
    clock = FakeClock()
    window = Window(60, clock)
    for i, latency in enumerate(samples):
        window.record(ok=True, latency_ms=latency)
        if i % 500 == 499:
            clock.advance(1)  # 40 seconds, all still inside the window
    stats = window.stats()
    assert stats.requests == len(samples)
    assert_quantiles_close(samples, stats)


def test_quantiles_of_a_bimodal_distribution() -> None:
    samples = [12.0] * 900 + [450.0] * 80 + [2500.0] * 20
    stats = window_of(samples).stats()
    assert_quantiles_close(samples, stats)
    assert stats.p50_ms is not None
    assert stats.p95_ms is not None
    assert stats.p99_ms is not None
    assert stats.p50_ms < 15 < 450 <= stats.p95_ms < 500 < 2500 <= stats.p99_ms


@given(
    st.lists(
        st.floats(min_value=0.0, max_value=EDGES_MS[-1], allow_nan=False),
        min_size=1,
        max_size=200,
    )
)
def test_quantiles_never_under_report(samples: list[float]) -> None:
    stats = window_of(samples).stats()
    for q, reported in ((0.50, stats.p50_ms), (0.95, stats.p95_ms), (0.99, stats.p99_ms)):
        true = true_quantile(samples, q)
        assert reported is not None
        assert reported >= true
        # Within one bucket of the truth (the first bucket also holds 0 ms).
        assert reported <= max(true * RESOLUTION, EDGES_MS[0])


def test_latency_beyond_the_top_edge_is_not_under_reported() -> None:
    # Timeouts are not capped in the config, so a signal attempt can take longer than the
    # histogram's top edge (about 120 s); its p95 must still not read below the truth.
    stats = window_of([300_000.0] * 100).stats()
    assert stats.p95_ms is not None
    assert stats.p95_ms >= 300_000.0


# --- bounded memory ------------------------------------------------------------------


def deep_size(window: Window) -> int:
    """Bytes of every object reachable from the window, its clock and code excluded."""
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, FakeClock)
    seen: set[int] = set()
    stack: list[object] = [window]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


def test_memory_is_bounded_after_a_million_attempts() -> None:
    clock = FakeClock(0.0)
    window = Window(60, clock)
    latencies = [0.7 * 1.13**k for k in range(97)]  # spread over most buckets
    per_second = 1_000  # so the million attempts cover 1,000 fake seconds

    def record(start: int, stop: int) -> None:
        for i in range(start, stop):
            if i % per_second == 0:
                clock.now = i // per_second
            window.record(ok=i % 17 != 0, latency_ms=latencies[i % 97])

    record(0, 100_000)  # 100 fake seconds: every slot has been filled and reused
    warm_size = deep_size(window)
    assert warm_size > len(window._slots) * len(EDGES_MS) * 8  # the walk sees the slots

    # Nothing may be kept per attempt, on the window or anywhere else: storing even one
    # 8-byte pointer per attempt would add 400 kB over this traced stretch.
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        record(100_000, 150_000)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 16_384

    record(150_000, 1_000_000)
    assert deep_size(window) - warm_size < 4_096
    assert len(window._slots) == 60
    assert all(len(slot.histogram) == len(EDGES_MS) + 1 for slot in window._slots)
    assert len(window._histogram) == len(EDGES_MS) + 1
    stats = window.stats()
    assert stats.requests == 60 * per_second  # only the last 60 fake seconds remain
    assert stats.requests == sum(slot.requests for slot in window._slots)
    assert sum(window._histogram) == stats.requests
