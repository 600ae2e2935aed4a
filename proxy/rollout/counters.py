"""The autopilot's figures over one interval: deltas between two reads of the counters.

A read holds cumulative values per replica and series, as `/metrics` or Prometheus give
them. The interval's figures are the differences, with Prometheus' reset rule applied per
series (as `rate()` does): a value lower than before means that replica restarted and the
counter began again from 0, so the delta is the new value. Summing over replicas first
would hide one replica's restart behind the others' growth.

Signal's attempts are the requests it served plus those that fell back (a fallback is a
signal attempt that legacy served); legacy's are the requests it served. Latency
quantiles come from the histogram's bucket deltas, summed over replicas, with PromQL's
`histogram_quantile` algorithm, so they equal what Prometheus says for the same counts.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from proxy.rollout.analysis import Sample, SideSample

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Counters:
    """Cumulative values at one read, per replica, so a restart is seen per replica."""

    served: Mapping[tuple[str, str], float]  # (replica, upstream) -> requests it answered
    errors: Mapping[tuple[str, str], float]  # (replica, upstream) -> failed attempts
    fallbacks: Mapping[str, float]  # replica -> signal attempts replayed on legacy
    buckets: Mapping[tuple[str, str, float], float]  # (replica, upstream, le) -> count
    guard_tripped: bool  # any replica's guard
    read_at: float  # seconds, on the reader's clock


def deltas(before: Mapping[K, float], after: Mapping[K, float]) -> dict[K, float]:
    """Per-series increase: a drop is a restart (the delta is the new value), a series new
    since `before` counts from 0, one gone by `after` is left out."""
    out: dict[K, float] = {}
    for key, now in after.items():
        then = before.get(key, 0.0)
        out[key] = now if now < then else now - then
    return out


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """PromQL's `histogram_quantile` over (upper bound, cumulative count) buckets.

    Linear interpolation inside the bucket the rank falls in, from 0 for the lowest one; a
    rank in the +Inf bucket gives the highest finite bound. None where PromQL gives NaN:
    no observation, no +Inf bucket, fewer than two buckets, q NaN.
    """
    if math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    merged: dict[float, float] = {}
    for bound, count in buckets:
        merged[bound] = merged.get(bound, 0.0) + count
    if len(merged) < 2 or max(merged) != math.inf:
        return None
    bounds = sorted(merged)
    counts, highest = [], 0.0
    for bound in bounds:
        # Counts cannot decrease with the bound; where inconsistent data says they do,
        # PromQL takes the running maximum (its "envelope"), and so do we.
        highest = max(highest, merged[bound])
        counts.append(highest)
    observations = counts[-1]
    if observations == 0:
        return None
    rank = q * observations
    at = bisect.bisect_left(counts, rank, hi=len(counts) - 1)
    if at == len(counts) - 1:
        return bounds[-2]
    if at == 0 and bounds[0] <= 0:
        return bounds[0]
    start, in_bucket = 0.0, counts[at]
    if at > 0:
        start = bounds[at - 1]
        in_bucket -= counts[at - 1]
        rank -= counts[at - 1]
    if in_bucket == 0:
        return None  # q=0 over an empty lowest bucket: 0/0, NaN in PromQL
    return start + (bounds[at] - start) * (rank / in_bucket)


def sample_between(before: Counters, after: Counters) -> Sample:
    """What happened between two reads, as the analysis takes it."""
    served = _by_upstream(deltas(before.served, after.served).items())
    errors = _by_upstream(deltas(before.errors, after.errors).items())
    fallbacks = sum(deltas(before.fallbacks, after.fallbacks).values())
    buckets: dict[str, dict[float, float]] = {}
    for (_, upstream, le), value in deltas(before.buckets, after.buckets).items():
        edges = buckets.setdefault(upstream, {})
        edges[le] = edges.get(le, 0.0) + value

    def side(name: str, attempts: float) -> SideSample:
        edges = sorted(buckets.get(name, {}).items())
        p50, p95, p99 = (_ms(histogram_quantile(q, edges)) for q in (0.5, 0.95, 0.99))
        return SideSample(round(attempts), round(errors.get(name, 0.0)), p50, p95, p99)

    return Sample(
        signal=side("signal", served.get("signal", 0.0) + fallbacks),
        legacy=side("legacy", served.get("legacy", 0.0)),
        guard_tripped=after.guard_tripped,
        seconds=after.read_at - before.read_at,
    )


def _by_upstream(items: Iterable[tuple[tuple[str, str], float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for (_, upstream), value in items:
        out[upstream] = out.get(upstream, 0.0) + value
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000
