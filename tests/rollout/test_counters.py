"""Deltas between two reads of the counters, and PromQL's histogram_quantile, as tables.

Prometheus' own answers for the same buckets are checked in tests/control/test_sources.py.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.rollout.analysis import SideSample
from proxy.rollout.counters import Counters, deltas, histogram_quantile, sample_between

INF = math.inf
EDGES = (0.05, 0.1, 0.2, 0.5, INF)


def hist(
    replica: str, upstream: str, counts: tuple[int, ...]
) -> dict[tuple[str, str, float], float]:
    """Cumulative buckets from per-bucket counts (one per edge of EDGES)."""
    out, total = {}, 0
    for edge, n in zip(EDGES, counts, strict=True):
        total += n
        out[(replica, upstream, edge)] = float(total)
    return out


def read(
    *,
    served: Mapping[tuple[str, str], float] | None = None,
    errors: Mapping[tuple[str, str], float] | None = None,
    fallbacks: Mapping[str, float] | None = None,
    buckets: Mapping[tuple[str, str, float], float] | None = None,
    tripped: bool = False,
    at: float = 0.0,
) -> Counters:
    return Counters(served or {}, errors or {}, fallbacks or {}, buckets or {}, tripped, at)


# --- deltas -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        pytest.param({"a": 10.0}, {"a": 25.0}, {"a": 15.0}, id="plain increase"),
        pytest.param({"a": 10.0}, {"a": 10.0}, {"a": 0.0}, id="no change"),
        pytest.param({"a": 100.0}, {"a": 7.0}, {"a": 7.0}, id="reset: the new value"),
        pytest.param({"a": 100.0}, {"a": 0.0}, {"a": 0.0}, id="reset to zero"),
        pytest.param({}, {"a": 4.0}, {"a": 4.0}, id="new series counts from 0"),
        pytest.param({"a": 4.0, "b": 9.0}, {"a": 5.0}, {"a": 1.0}, id="vanished series ignored"),
    ],
)
def test_deltas(
    before: dict[str, float], after: dict[str, float], expected: dict[str, float]
) -> None:
    assert deltas(before, after) == expected


# --- sample_between -----------------------------------------------------------------------


def test_plain_deltas_summed_over_replicas() -> None:
    before = read(
        served={("a", "signal"): 100, ("a", "legacy"): 900, ("b", "signal"): 50},
        errors={("a", "signal"): 2, ("a", "legacy"): 5, ("b", "signal"): 1},
        fallbacks={"a": 1, "b": 0},
        at=1000.0,
    )
    after = read(
        served={("a", "signal"): 160, ("a", "legacy"): 1000, ("b", "signal"): 90},
        errors={("a", "signal"): 5, ("a", "legacy"): 6, ("b", "signal"): 2},
        fallbacks={"a": 3, "b": 1},
        at=1060.5,
    )
    s = sample_between(before, after)
    # signal: served 60 + 40, plus 2 + 1 that fell back to legacy
    assert s.signal == SideSample(103, 4)
    assert s.legacy == SideSample(100, 1)
    assert s.seconds == 60.5
    assert s.guard_tripped is False


def test_reset_on_one_replica_counts_its_new_values() -> None:
    before = read(
        served={("a", "signal"): 500, ("b", "signal"): 400},
        errors={("a", "signal"): 30, ("b", "signal"): 20},
        fallbacks={"a": 10, "b": 8},
        buckets=hist("a", "signal", (400, 100, 0, 0, 0)) | hist("b", "signal", (400, 0, 0, 0, 0)),
    )
    # b restarted: its counters began again and stand at 25, 2, 1.
    after = read(
        served={("a", "signal"): 600, ("b", "signal"): 25},
        errors={("a", "signal"): 31, ("b", "signal"): 2},
        fallbacks={"a": 10, "b": 1},
        buckets=hist("a", "signal", (450, 150, 0, 0, 0)) | hist("b", "signal", (0, 0, 0, 25, 0)),
    )
    s = sample_between(before, after)
    assert (s.signal.attempts, s.signal.errors) == (100 + 25 + 0 + 1, 1 + 2)
    # Bucket deltas: a 50 in <=0.05 and 50 in (0.05, 0.1]; b 25 in (0.2, 0.5].
    # p50 rank 62.5 of 125: (0.05, 0.1] holds ranks 50-100, 12.5 of 50 into it.
    assert s.signal.p50_ms == pytest.approx(62.5)
    # p99 rank 123.75: (0.2, 0.5] holds 100-125, 23.75 of 25 into it.
    assert s.signal.p99_ms == pytest.approx(200 + 300 * 23.75 / 25)


def test_new_replica_counts_from_zero() -> None:
    before = read(served={("a", "signal"): 10}, fallbacks={"a": 0})
    after = read(served={("a", "signal"): 15, ("b", "signal"): 7}, fallbacks={"a": 0, "b": 2})
    assert sample_between(before, after).signal.attempts == 5 + 7 + 2


def test_vanished_replica_is_ignored() -> None:
    before = read(
        served={("a", "legacy"): 10, ("b", "legacy"): 70},
        errors={("b", "legacy"): 9},
        buckets=hist("b", "legacy", (70, 0, 0, 0, 0)),
    )
    after = read(served={("a", "legacy"): 30}, buckets=hist("a", "legacy", (0, 20, 0, 0, 0)))
    s = sample_between(before, after)
    assert (s.legacy.attempts, s.legacy.errors) == (20, 0)
    # 20 in (0.05, 0.1]: interpolated inside it
    assert s.legacy.p50_ms == pytest.approx(75.0)
    assert s.legacy.p95_ms == pytest.approx(97.5)
    assert s.legacy.p99_ms == pytest.approx(99.5)


def test_fallbacks_are_signal_attempts_legacy_served() -> None:
    before = read(served={("a", "signal"): 0, ("a", "legacy"): 0}, fallbacks={"a": 0})
    after = read(
        served={("a", "signal"): 10, ("a", "legacy"): 40},
        errors={("a", "signal"): 30},
        fallbacks={"a": 30},
    )
    s = sample_between(before, after)
    assert s.signal.attempts == 40
    assert s.signal.errors == 30
    assert s.signal.error_rate == 0.75
    # legacy's attempts are what it served, the fallbacks included
    assert s.legacy.attempts == 40


def test_no_traffic() -> None:
    counts = read(
        served={("a", "signal"): 50, ("a", "legacy"): 50},
        errors={("a", "signal"): 1},
        fallbacks={"a": 1},
        buckets=hist("a", "signal", (50, 0, 0, 0, 0)) | hist("a", "legacy", (0, 50, 0, 0, 0)),
        at=5.0,
    )
    s = sample_between(counts, dataclasses.replace(counts, read_at=65.0))
    assert s.signal == SideSample(0, 0, None, None, None)
    assert s.legacy == SideSample(0, 0, None, None, None)
    assert s.seconds == 60.0


def test_nothing_at_all() -> None:
    s = sample_between(read(), read(at=1.0))
    assert s.signal == SideSample(0, 0)
    assert s.legacy == SideSample(0, 0)


def test_guard_tripped_is_the_second_reads() -> None:
    assert sample_between(read(tripped=True), read()).guard_tripped is False
    assert sample_between(read(), read(tripped=True)).guard_tripped is True


# --- histogram_quantile -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        pytest.param(0.95, [(0.1, 10), (0.2, 10), (INF, 10)], 0.095, id="all in first bucket"),
        pytest.param(0.5, [(0.1, 0), (0.2, 0), (INF, 10)], 0.2, id="all in +Inf"),
        pytest.param(0.95, [(0.1, 0), (0.2, 0), (INF, 0)], None, id="empty"),
        pytest.param(0.95, [], None, id="no buckets"),
        pytest.param(0.5, [(INF, 4)], None, id="only +Inf"),
        pytest.param(0.5, [(0.1, 2), (0.2, 4)], None, id="no +Inf bucket"),
        pytest.param(0.5, [(0.1, 5), (0.2, 10), (INF, 10)], 0.1, id="rank at a bucket edge"),
        pytest.param(1.0, [(0.1, 5), (0.2, 10), (INF, 10)], 0.2, id="q=1 ends at last edge"),
        pytest.param(0.0, [(0.1, 5), (0.2, 10), (INF, 10)], 0.0, id="q=0 from lower edge 0"),
        pytest.param(0.0, [(0.1, 0), (0.2, 10), (INF, 10)], None, id="q=0, first empty"),
        # 100 observations: 50 <= 0.1, 40 in (0.1, 0.2], 10 in (0.2, 0.5]. Rank 95 is
        # 5 of 10 into the last finite one: 0.2 + 0.3 * 0.5.
        pytest.param(0.95, [(0.1, 50), (0.2, 90), (0.5, 100), (INF, 100)], 0.35, id="q=0.95 known"),
        pytest.param(0.5, [(0.1, 50), (0.2, 90), (0.5, 100), (INF, 100)], 0.1, id="q=0.5 at edge"),
        pytest.param(0.995, [(0.1, 50), (0.2, 90), (0.5, 99), (INF, 100)], 0.5, id="rank in +Inf"),
        pytest.param(0.95, [(INF, 10), (0.2, 10), (0.1, 5)], 0.19, id="unsorted input"),
        pytest.param(0.75, [(0.1, 2), (0.1, 2), (0.2, 8), (INF, 8)], 0.15, id="same bound merged"),
        pytest.param(
            0.5, [(0.1, 6), (0.2, 4), (INF, 10)], 0.1 * 5 / 6, id="non-monotonic: envelope"
        ),
        pytest.param(0.5, [(-1.0, 5), (0.0, 8), (INF, 10)], -1.0, id="non-positive lowest"),
        pytest.param(-0.1, [(0.1, 5), (INF, 5)], -INF, id="q<0"),
        pytest.param(1.1, [(0.1, 5), (INF, 5)], INF, id="q>1"),
        pytest.param(math.nan, [(0.1, 5), (INF, 5)], None, id="q NaN"),
    ],
)
def test_histogram_quantile(
    q: float, buckets: list[tuple[float, float]], expected: float | None
) -> None:
    got = histogram_quantile(q, buckets)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@st.composite
def histograms(draw: st.DrawFn) -> list[tuple[float, float]]:
    per_bucket = draw(st.lists(st.integers(0, 1000), min_size=len(EDGES), max_size=len(EDGES)))
    out, total = [], 0
    for edge, n in zip(EDGES, per_bucket, strict=True):
        total += n
        out.append((edge, float(total)))
    return out


@given(histograms(), st.floats(0, 1), st.floats(0, 1))
def test_quantile_is_monotonic_and_within_the_edges(
    buckets: list[tuple[float, float]], q1: float, q2: float
) -> None:
    low, high = sorted((q1, q2))
    a, b = histogram_quantile(low, buckets), histogram_quantile(high, buckets)
    if buckets[-1][1] == 0:
        assert a is None
        assert b is None
        return
    if b is not None and a is not None:
        assert a <= b
    for v in (a, b):
        assert v is None or 0 <= v <= EDGES[-2]


@given(
    st.dictionaries(st.sampled_from("abcd"), st.integers(0, 10**6)),
    st.dictionaries(st.sampled_from("abcd"), st.integers(0, 10**6)),
    st.dictionaries(st.sampled_from("abcd"), st.integers(0, 10**6)),
)
def test_deltas_never_negative_and_add_up_without_resets(
    first: dict[str, int], grow1: dict[str, int], grow2: dict[str, int]
) -> None:
    """Reads that only grow: the deltas over two intervals add up to the whole one."""
    one = {k: float(v) for k, v in first.items()}
    two = {k: one.get(k, 0.0) + grow1.get(k, 0) for k in one.keys() | grow1.keys()}
    three = {k: two.get(k, 0.0) + grow2.get(k, 0) for k in two.keys() | grow2.keys()}
    whole, halves = deltas(one, three), (deltas(one, two), deltas(two, three))
    assert all(v >= 0 for v in whole.values())
    for key, value in whole.items():
        assert value == sum(h.get(key, 0.0) for h in halves)
