"""Every Prometheus metric of SPEC 9, on a registry the application owns.

Label values come from small fixed sets: upstream names, configured feature names, a
closed list of methods and the reason enums. A session id never becomes a label.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.multiprocess import MultiProcessCollector

from proxy.config.tls import certificate_not_after
from proxy.config.values import DEFAULT_FEATURE, Config
from proxy.errors import FailureReason
from proxy.rollout.drain import DrainReason
from proxy.rollout.routing import Reason, Side

# 0.2 s and 0.5 s are the promotion and rollback P95 criteria: they must be bucket edges
# so histogram_quantile() is exact at the thresholds that matter.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)

UPGRADE_RESULTS = ("switched", "refused", "error", "limit")
DRAIN_REASONS = tuple(reason.value for reason in DrainReason)

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """Unknown or made-up methods share one label so a client cannot grow the series."""
    return method if method in KNOWN_METHODS else "other"


class Metrics:
    """Owns the registry and every metric; survives config reloads."""

    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # What /metrics serves. With `rollout serve --workers N` every worker writes its
        # values to files in PROMETHEUS_MULTIPROC_DIR and the admin worker serves their
        # aggregate (counters and histograms summed; gauges as their mode says).
        self.exposition = r
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition)  # type: ignore[no-untyped-call]
        else:
            ProcessCollector(registry=r)  # process_resident_memory_bytes, open fds, CPU
        self.requests = Counter(
            "rollout_requests_total",
            "Requests answered, by the upstream that served the response.",
            ["upstream", "feature", "method", "code"],
            registry=r,
        )
        self.duration = Histogram(
            "rollout_request_duration_seconds",
            "Time from request received to response complete, by serving upstream.",
            ["upstream", "feature"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "rollout_upstream_errors_total",
            "Failed attempts against an upstream.",
            ["upstream", "reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            "rollout_fallbacks_total",
            "Signal attempts replayed against legacy.",
            ["feature", "reason"],
            registry=r,
        )
        self.routing = Counter(
            "rollout_routing_decisions_total",
            "Routing decisions, by chosen upstream and why.",
            ["upstream", "reason"],
            registry=r,
        )
        self.percentage = Gauge(
            "rollout_percentage",
            "Configured rollout percentage (feature=default is the global one).",
            ["feature"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.effective_percentage = Gauge(
            "rollout_effective_percentage",
            "Percentage routing applies now: 0 during emergency or a tripped guard.",
            ["feature"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.guard_tripped = Gauge(
            "rollout_guard_tripped",
            "1 while the automatic rollback guard holds.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.reloads = Counter(
            "rollout_config_reloads_total", "Configuration reloads.", ["result"], registry=r
        )
        self.last_reload_ok = Gauge(
            "rollout_config_last_reload_successful",
            "1 if the last configuration reload was applied.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.shadow = Counter(
            "rollout_shadow_requests_total",
            "Shadow comparisons of legacy-served requests against signal, by result.",
            ["feature", "result"],
            registry=r,
        )
        self.in_flight = Gauge(
            "rollout_in_flight_requests",
            "Requests being proxied now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.upgraded = Gauge(
            "rollout_upgraded_connections",
            "Upgraded (WebSocket) connections open now, by upstream.",
            ["upstream"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.upgrades = Counter(
            "rollout_upgrades_total",
            "Upgrade handshakes, by upstream and result (switched, refused, error, limit).",
            ["upstream", "result"],
            registry=r,
        )
        self.upgraded_bytes = Counter(
            "rollout_upgraded_bytes_total",
            "Bytes relayed over upgraded connections, by upstream and direction.",
            ["upstream", "direction"],
            registry=r,
        )
        self.upgraded_drained = Counter(
            "rollout_upgraded_drained_total",
            "Upgraded connections closed by the proxy, by reason.",
            ["reason"],
            registry=r,
        )
        # Updated per request only where it cannot be read at scrape time (multiprocess
        # mode keeps gauge values in files); see `count_in_flight`.
        self.in_flight_per_request = self.exposition is not r
        self.certificate_expiry = Gauge(
            "rollout_tls_certificate_expiry_seconds",
            "Seconds until a TLS certificate expires (certificate=listen, or the upstream "
            "whose client certificate it is).",
            ["certificate"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.build_info = Gauge(
            "rollout_build_info",
            "Always 1; the version label says which build.",
            ["version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self._routed: dict[tuple[Side, Reason], Any] = {}
        self._errors: dict[tuple[Side, FailureReason], Any] = {}
        self._answered: dict[tuple[Side, str, str, int], tuple[Any, Any]] = {}
        self.build_info.labels(version=version).set(1)
        self.last_reload_ok.set(1)
        for side in Side:
            for error in (r for r in FailureReason):
                self.upstream_errors.labels(upstream=side.value, reason=error.value)
            for reason in Reason:
                self.routing.labels(upstream=side.value, reason=reason.value)
        for result in ("success", "failure"):
            self.reloads.labels(result=result)
        for side in Side:
            self.upgraded.labels(upstream=side.value)
            for result in UPGRADE_RESULTS:
                self.upgrades.labels(upstream=side.value, result=result)
            for direction in ("upstream", "downstream"):
                self.upgraded_bytes.labels(upstream=side.value, direction=direction)
        for drained in DRAIN_REASONS:
            self.upgraded_drained.labels(reason=drained)

    # --- the hot path: label children looked up once, then reused -----------------------
    # prometheus_client's labels() validates and hashes its arguments on every call
    # (~5 us); a dict lookup on a tuple of small fixed values costs a fraction of that.

    def routed(self, side: Side, reason: Reason) -> None:
        key = (side, reason)
        child = self._routed.get(key)
        if child is None:
            child = self._routed[key] = self.routing.labels(
                upstream=side.value, reason=reason.value
            )
        child.inc()

    def count_in_flight(self, read: Callable[[], float]) -> None:
        """Read the in-flight gauge from `read` at scrape time: nothing to do per request."""
        if not self.in_flight_per_request:
            self.in_flight.set_function(read)

    def upstream_error(self, side: Side, reason: FailureReason) -> None:
        key = (side, reason)
        child = self._errors.get(key)
        if child is None:
            child = self._errors[key] = self.upstream_errors.labels(
                upstream=side.value, reason=reason.value
            )
        child.inc()

    def answered(self, side: Side, feature: str, method: str, code: int, seconds: float) -> None:
        """One request answered: counted with its status, timed in the histogram."""
        key = (side, feature, method, code)
        pair = self._answered.get(key)
        if pair is None:
            if len(self._answered) > 10_000:
                self._answered.clear()  # bounded: methods and codes are closed sets anyway
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

    def shadow_result(self, feature: str, result: str) -> None:
        self.shadow.labels(feature=feature, result=result).inc()

    def apply_config(self, config: Config, *, guard_tripped: bool) -> None:
        """Refresh the configuration gauges and pre-create the per-feature series."""
        if self.exposition is self.registry:
            # Drop the series of removed features. (Not possible in multiprocess mode:
            # a removed feature's last value stays until the workers restart.)
            self.percentage.clear()
            self.effective_percentage.clear()
        for feature, pct in config.feature_percentages().items():
            self.percentage.labels(feature=feature).set(pct)
            effective = 0.0 if (config.rollout.emergency or guard_tripped) else pct
            self.effective_percentage.labels(feature=feature).set(effective)
            for side in Side:
                self.duration.labels(upstream=side.value, feature=feature)
            for reason in FailureReason:
                self.fallbacks.labels(feature=feature, reason=reason.value)
            if config.shadow.enabled:
                for result in ("match", "mismatch", "error", "dropped"):
                    self.shadow.labels(feature=feature, result=result)
        self.guard_tripped.set(1 if guard_tripped else 0)
        self._certificates(config)

    def _certificates(self, config: Config) -> None:
        """The upstreams' client certificates: seconds left, read at scrape time (in
        multiprocess mode: as of the last load)."""
        for upstream in (config.upstreams.signal, config.upstreams.legacy):
            cert_file = upstream.tls.cert_file if upstream.tls is not None else None
            not_after = certificate_not_after(cert_file) if cert_file else None
            if not_after is None:
                if self.exposition is self.registry:  # (no removal in multiprocess mode)
                    with contextlib.suppress(KeyError):
                        self.certificate_expiry.remove(upstream.name)
                continue
            child = self.certificate_expiry.labels(certificate=upstream.name)
            if self.in_flight_per_request:
                child.set(not_after - time.time())
            else:
                child.set_function(_seconds_until(not_after))

    def listen_certificate(self, not_after: float | None) -> None:
        """The public listener's certificate being served (set when one is taken)."""
        if not_after is None:
            return
        child = self.certificate_expiry.labels(certificate="listen")
        if self.in_flight_per_request:
            child.set(not_after - time.time())
        else:
            child.set_function(_seconds_until(not_after))


def _seconds_until(moment: float) -> Callable[[], float]:
    return lambda: moment - time.time()


__all__ = [
    "DEFAULT_FEATURE",
    "DRAIN_REASONS",
    "LATENCY_BUCKETS",
    "UPGRADE_RESULTS",
    "Metrics",
    "method_label",
]
