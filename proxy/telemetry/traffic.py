"""The per-request metrics of SPEC 9, recorded one of two ways chosen at start.

`Slots` (one process, the default): each series is a plain list, and the families are
built from the lists by a custom Collector when /metrics or the status page's sampler
reads the registry. Per request that is a dict lookup on a tuple of small fixed values and
a few adds: no lock, no label validation, no Python loop over the buckets, which is what
prometheus_client's Counter.inc and Histogram.observe cost on the request path (figures:
bench/RESULTS.md, issue 19). No lock is needed: the request path, the admin listener's
/metrics handler (prometheus_client's aiohttp handler collects synchronously, inside the
handler) and the status page's sampler all run on the event loop's thread, so a collect
never interleaves with a request. Were one to run on another thread it would still be
safe: only the loop writes, and collect() iterates copies (`dict.copy()` is atomic under
the GIL), so the worst is a scrape one request ahead in one series than in another.

`Children` (`rollout serve --workers N`): values must reach prometheus_client's mmap files
in PROMETHEUS_MULTIPROC_DIR for the admin worker to sum them, so they go through the
library's metric children, as before.

Both expose the same names, types, HELP texts, label names and pre-initialised series.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from proxy.errors import FailureReason
from proxy.rollout.routing import Reason, Side

# 0.2 s and 0.5 s are the promotion and rollback P95 criteria: they must be bucket edges
# so histogram_quantile() is exact at the thresholds that matter.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# name (without _total), HELP, label names: one table for both recorders.
REQUESTS = (
    "rollout_requests",
    "Requests answered, by the upstream that served the response.",
    ("upstream", "feature", "method", "code"),
)
DURATION = (
    "rollout_request_duration_seconds",
    "Time from request received to response complete, by serving upstream.",
    ("upstream", "feature"),
)
UPSTREAM_ERRORS = (
    "rollout_upstream_errors",
    "Failed attempts against an upstream.",
    ("upstream", "reason"),
)
FALLBACKS = (
    "rollout_fallbacks",
    "Signal attempts replayed against legacy.",
    ("feature", "reason"),
)
ROUTING = (
    "rollout_routing_decisions",
    "Routing decisions, by chosen upstream and why.",
    ("upstream", "reason"),
)

# le labels as prometheus_client writes them ("1.0", "+Inf").
_LE = (*(floatToGoString(b) for b in LATENCY_BUCKETS), "+Inf")  # type: ignore[no-untyped-call]
# A histogram slot: one count per bucket (not cumulative), then the sum, then created.
_SUM = len(_LE)
_CREATED = _SUM + 1


def method_label(method: str) -> str:
    """Unknown or made-up methods share one label so a client cannot grow the series."""
    return method if method in KNOWN_METHODS else "other"


class Recorder(Protocol):
    """What the request path calls; `feature` pre-creates a configured feature's series."""

    def routed(self, side: Side, reason: Reason) -> None: ...
    def answered(
        self, side: Side, feature: str, method: str, code: int, seconds: float
    ) -> None: ...
    def upstream_error(self, side: Side, reason: FailureReason) -> None: ...
    def fallback(self, feature: str, reason: FailureReason) -> None: ...
    def feature(self, name: str) -> None: ...


class Slots(Collector):
    """Per-series lists on the request path, turned into metric families at scrape time.

    A counter slot is `[value, created]`; a histogram slot holds one count per bucket
    (the last one +Inf), then the sum and the created time. Keys are the series' label
    values (side and reasons as enums, code as an int), so the dicts hold exactly the
    series exposed: bounded by the same closed sets as the labels (sides, configured
    features, the methods of `method_label`, status codes), never cleared, no count lost.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests: dict[tuple[Side, str, str, int], list[float]] = {}
        self._durations: dict[tuple[Side, str], list[float]] = {}
        self._errors: dict[tuple[Side, FailureReason], list[float]] = {}
        self._fallbacks: dict[tuple[str, FailureReason], list[float]] = {}
        self._routing: dict[tuple[Side, Reason], list[float]] = {}
        for side in Side:
            for error in FailureReason:
                self._errors[side, error] = _counter()
            for reason in Reason:
                self._routing[side, reason] = _counter()
        registry.register(self)

    # --- the request path -----------------------------------------------------------

    def routed(self, side: Side, reason: Reason) -> None:
        self._routing[side, reason][0] += 1  # every pair exists from the start

    def upstream_error(self, side: Side, reason: FailureReason) -> None:
        self._errors[side, reason][0] += 1

    def fallback(self, feature: str, reason: FailureReason) -> None:
        slot = self._fallbacks.get((feature, reason))
        if slot is None:
            slot = self._fallbacks[feature, reason] = _counter()
        slot[0] += 1

    def answered(self, side: Side, feature: str, method: str, code: int, seconds: float) -> None:
        if method not in KNOWN_METHODS:
            method = "other"
        key = (side, feature, method, code)
        count = self._requests.get(key)
        if count is None:
            count = self._requests[key] = _counter()
        count[0] += 1
        timing = self._durations.get((side, feature))
        if timing is None:
            timing = self._histogram(side, feature)
        # bisect_left: a value equal to a bound belongs to that bucket (le is inclusive)
        timing[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        timing[_SUM] += seconds

    def feature(self, name: str) -> None:
        for side in Side:
            if (side, name) not in self._durations:
                self._histogram(side, name)
        for reason in FailureReason:
            if (name, reason) not in self._fallbacks:
                self._fallbacks[name, reason] = _counter()

    def _histogram(self, side: Side, feature: str) -> list[float]:
        slot = self._durations[side, feature] = [0.0] * _CREATED + [time.time()]
        return slot

    # --- scrape time ----------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        """The family names only (the registry checks them for clashes)."""
        yield CounterMetricFamily(REQUESTS[0], REQUESTS[1], labels=REQUESTS[2])
        yield HistogramMetricFamily(DURATION[0], DURATION[1], labels=DURATION[2])
        for name, help_text, labels in (UPSTREAM_ERRORS, FALLBACKS, ROUTING):
            yield CounterMetricFamily(name, help_text, labels=labels)

    def collect(self) -> Iterable[Metric]:
        created = _with_created()
        # Each family is built whole before it is yielded, so recording between yields
        # changes no dict under an iteration; the copies are for a collect from another
        # thread (see the module's docstring).
        yield _counters(
            REQUESTS,
            [((s.value, f, m, str(c)), v) for (s, f, m, c), v in self._requests.copy().items()],
        )
        duration = HistogramMetricFamily(DURATION[0], DURATION[1], labels=DURATION[2])
        for (side, feature), slot in self._durations.copy().items():
            labels = (side.value, feature)
            duration.add_metric(labels, list(zip(_LE, _cumulative(slot), strict=True)), slot[_SUM])
            if created:
                named = dict(zip(DURATION[2], labels, strict=True))
                stamp = slot[_CREATED]
                duration.samples.append(Sample(DURATION[0] + "_created", named, stamp, None, None))
        yield duration
        yield _counters(
            UPSTREAM_ERRORS, [((s.value, r.value), v) for (s, r), v in self._errors.copy().items()]
        )
        yield _counters(
            FALLBACKS, [((f, r.value), v) for (f, r), v in self._fallbacks.copy().items()]
        )
        yield _counters(
            ROUTING, [((s.value, r.value), v) for (s, r), v in self._routing.copy().items()]
        )


class Children:
    """The same series through prometheus_client's metrics, for multiprocess mode.

    Label children are looked up once and cached: `labels()` validates and hashes its
    arguments on every call, a dict lookup on a tuple of small fixed values costs a
    fraction of that.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter(REQUESTS[0], REQUESTS[1], REQUESTS[2], registry=r)
        self.duration = Histogram(
            DURATION[0], DURATION[1], DURATION[2], buckets=LATENCY_BUCKETS, registry=r
        )
        self.upstream_errors = Counter(*UPSTREAM_ERRORS, registry=r)
        self.fallbacks = Counter(*FALLBACKS, registry=r)
        self.routing = Counter(*ROUTING, registry=r)
        self._answered: dict[tuple[Side, str, str, int], tuple[Counter, Histogram]] = {}
        self._routed = {
            (side, reason): self.routing.labels(upstream=side.value, reason=reason.value)
            for side in Side
            for reason in Reason
        }
        self._errors = {
            (side, error): self.upstream_errors.labels(upstream=side.value, reason=error.value)
            for side in Side
            for error in FailureReason
        }

    def routed(self, side: Side, reason: Reason) -> None:
        self._routed[side, reason].inc()

    def upstream_error(self, side: Side, reason: FailureReason) -> None:
        self._errors[side, reason].inc()

    def fallback(self, feature: str, reason: FailureReason) -> None:
        self.fallbacks.labels(feature=feature, reason=reason.value).inc()

    def answered(self, side: Side, feature: str, method: str, code: int, seconds: float) -> None:
        key = (side, feature, method, code)
        pair = self._answered.get(key)
        if pair is None:
            if len(self._answered) > 10_000:
                # Only this cache of children: the series and their counts stay.
                self._answered.clear()
            pair = self._answered[key] = (
                self.requests.labels(
                    upstream=side.value,
                    feature=feature,
                    method=method_label(method),
                    code=str(code),
                ),
                self.duration.labels(upstream=side.value, feature=feature),
            )
        pair[0].inc()
        pair[1].observe(seconds)

    def feature(self, name: str) -> None:
        for side in Side:
            self.duration.labels(upstream=side.value, feature=name)
        for reason in FailureReason:
            self.fallbacks.labels(feature=name, reason=reason.value)


def _counter() -> list[float]:
    return [0.0, time.time()]


def _counters(
    family: tuple[str, str, tuple[str, ...]],
    series: Iterable[tuple[tuple[str, ...], list[float]]],
) -> CounterMetricFamily:
    name, help_text, labels = family
    metric = CounterMetricFamily(name, help_text, labels=labels)
    created = _with_created()
    for values, (value, stamp) in series:
        metric.add_metric(values, value, created=stamp if created else None)
    return metric


def _cumulative(slot: list[float]) -> Iterator[float]:
    total = 0.0
    for count in slot[:_SUM]:
        total += count
        yield total


def _with_created() -> bool:
    """prometheus_client's own switch for the `_created` samples, read the same way."""
    return os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower() not in (
        "true",
        "1",
        "t",
    )


__all__ = [
    "KNOWN_METHODS",
    "LATENCY_BUCKETS",
    "Children",
    "Recorder",
    "Slots",
    "method_label",
]
