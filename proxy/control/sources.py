"""Where the autopilot reads its figures: one admin listener, or Prometheus over a fleet.

Each source's `read()` returns the cumulative counters of SPEC 9 at one moment, per
replica (`proxy.rollout.counters.Counters`); the analysis takes the deltas between two
reads. A read that cannot be trusted raises `FiguresError`: an unreachable listener or
Prometheus, an answer that is not theirs, or no rollout-proxy series at all. An empty
answer is never taken for zero traffic (Flagger rolls quiet services back for that).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from proxy.config.values import Config
from proxy.control.client import LiveError, admin_url, fetch
from proxy.control.prometheus import Row, query, shown, value_of
from proxy.rollout.counters import Counters

Clock = Callable[[], float]
K = TypeVar("K", tuple[str, str], tuple[str, str, float])

ADMIN_TIMEOUT_S = 5.0

# Always present where a proxy is scraped, even before its first request: every
# (upstream, reason) pair is created at start (telemetry/metrics.py). Requests, by
# contrast, have no series until one is answered.
MARKER = "rollout_upstream_errors_total"

QUERIES = {
    "served": "sum by (job, instance, upstream) (rollout_requests_total)",
    "errors": "sum by (job, instance, upstream) (rollout_upstream_errors_total)",
    "fallbacks": "sum by (job, instance) (rollout_fallbacks_total)",
    "buckets": "sum by (job, instance, upstream, le) (rollout_request_duration_seconds_bucket)",
    "guard": "max(rollout_guard_tripped)",
}
# All of them as one query, each series tagged with its figure. One query sees whole
# scrapes only (Prometheus' head isolation); five could each see a different scrape, so
# that served and errors of one interval would come from different moments.
READ = " or ".join(
    f'label_replace({expr}, "figure", "{name}", "", "")' for name, expr in QUERIES.items()
)


class FiguresError(Exception):
    """The figures could not be read; the message is one line naming the source."""


class FiguresSource(Protocol):
    def read(self) -> Counters: ...

    def describe(self) -> str: ...


class AdminSource:
    """One proxy's `/metrics` (with `--workers`, every worker's, summed by the proxy)."""

    def __init__(self, base: str, token: str | None, *, clock: Clock = time.time) -> None:
        self.base = base.rstrip("/")
        self._token = token
        self._clock = clock

    def describe(self) -> str:
        return f"admin listener {shown(self.base)}"

    def read(self) -> Counters:
        read_at = self._clock()
        url = self.base + "/metrics"
        try:
            text = fetch(url, self._token, timeout=ADMIN_TIMEOUT_S)
        except LiveError as exc:
            raise FiguresError(f"{self.describe()}: {_reason(exc, url)}") from exc
        return counters_from_metrics(text, shown(self.base), read_at, where=self.describe())


def counters_from_metrics(text: str, replica: str, read_at: float, *, where: str) -> Counters:
    """The counters in one `/metrics` exposition, all under `replica`."""
    from prometheus_client.parser import text_string_to_metric_families

    served: dict[tuple[str, str], float] = {}
    errors: dict[tuple[str, str], float] = {}
    fallbacks = 0.0
    buckets: dict[tuple[str, str, float], float] = {}
    tripped = marked = False
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                upstream = s.labels.get("upstream", "")
                if s.name == "rollout_requests_total":
                    _add(served, (replica, upstream), s.value)
                elif s.name == MARKER:
                    marked = True
                    _add(errors, (replica, upstream), s.value)
                elif s.name == "rollout_fallbacks_total":
                    fallbacks += s.value
                elif s.name == "rollout_request_duration_seconds_bucket":
                    _add(buckets, (replica, upstream, float(s.labels["le"])), s.value)
                elif s.name == "rollout_guard_tripped":
                    tripped = tripped or s.value > 0
    except (ValueError, KeyError, TypeError) as exc:
        raise FiguresError(f"{where}: /metrics is not Prometheus text ({exc})") from exc
    if not marked:
        raise FiguresError(f"{where}: /metrics has no {MARKER}: not a rollout-proxy")
    return Counters(served, errors, {replica: fallbacks}, buckets, tripped, read_at)


class PrometheusSource:
    """Every replica Prometheus scrapes, summed per replica by one instant query."""

    def __init__(self, url: str, *, clock: Clock = time.time) -> None:
        self.url = url.rstrip("/")
        self._clock = clock

    def describe(self) -> str:
        return f"Prometheus {shown(self.url)}"

    def read(self) -> Counters:
        read_at = self._clock()
        try:
            answer = query(self.url, READ, at=read_at)
        except LiveError as exc:
            raise FiguresError(str(exc)) from exc
        rows: dict[str, list[Row]] = {name: [] for name in QUERIES}
        for row in answer:
            figure = row.get("metric", {}).get("figure", "") if isinstance(row, dict) else ""
            if figure in rows:
                rows[figure].append(row)
        if not rows["errors"]:
            raise FiguresError(
                f"{self.describe()}: no {MARKER} series: it scrapes no rollout-proxy "
                "(check its scrape targets and that they are up)"
            )
        try:
            served = {_two(r, "upstream"): value_of(r) for r in rows["served"] if _real(r)}
            errors = {_two(r, "upstream"): value_of(r) for r in rows["errors"] if _real(r)}
            fallbacks = {_replica(r): value_of(r) for r in rows["fallbacks"] if _real(r)}
            buckets = {
                (_replica(r), r["metric"].get("upstream", ""), float(r["metric"]["le"])): (
                    value_of(r)
                )
                for r in rows["buckets"]
                if _real(r)
            }
            tripped = any(value_of(r) > 0 for r in rows["guard"] if _real(r))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise FiguresError(f"{self.describe()}: unexpected answer ({exc})") from exc
        return Counters(served, errors, fallbacks, buckets, tripped, read_at)


def source_for(config: Config, admin: str | None) -> FiguresSource:
    """Prometheus when `autopilot.prometheus` is set, else the admin listener (`admin`
    overrides the configured address)."""
    if config.autopilot.prometheus:
        return PrometheusSource(config.autopilot.prometheus)
    return AdminSource(admin_url(config, admin), config.admin.token)


def _replica(row: Row) -> str:
    labels = row["metric"]
    return f"{labels.get('job', '')}/{labels.get('instance', '')}"


def _two(row: Row, label: str) -> tuple[str, str]:
    return _replica(row), row["metric"].get(label, "")


def _real(row: Row) -> bool:
    return not math.isnan(value_of(row))


def _reason(exc: LiveError, url: str) -> str:
    return str(exc).removeprefix(url + ": ")


def _add(into: dict[K, float], key: K, value: float) -> None:
    into[key] = into.get(key, 0.0) + value
