"""Every Prometheus metric of SPEC 9, on a registry the application owns.

Label values come from small fixed sets: upstream names, configured feature names, a
closed list of methods and the reason enums. A session id never becomes a label.

The per-request families (requests, duration, routing, upstream errors, fallbacks) are
recorded by `proxy.telemetry.traffic`: plain per-series slots read by a custom Collector
at scrape time in one process, prometheus_client's children in multiprocess mode. The
slots take the library's locks and per-bucket loop off the request path, where they were
a measurable share of the proxy's CPU (bench/RESULTS.md, issue 19).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.multiprocess import MultiProcessCollector

from proxy.config.tls import certificate_not_after
from proxy.config.values import DEFAULT_FEATURE, Config
from proxy.rollout.drain import DrainReason
from proxy.rollout.routing import Side
from proxy.telemetry.traffic import LATENCY_BUCKETS, Children, Recorder, Slots, method_label

UPGRADE_RESULTS = ("switched", "refused", "error", "limit")
DRAIN_REASONS = tuple(reason.value for reason in DrainReason)


class Metrics:
    """Owns the registry and every metric; survives config reloads.

    The request path calls `routed`, `answered`, `upstream_error` and `fallback`: the
    methods of the recorder chosen at start, bound here once.
    """

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
        # The per-request families, registered here so /metrics keeps SPEC 9's order.
        self.traffic: Recorder = Children(r) if self.exposition is not r else Slots(r)
        # Bound once: the request path calls these without a second indirection.
        self.routed = self.traffic.routed
        self.answered = self.traffic.answered
        self.upstream_error = self.traffic.upstream_error
        self.fallback = self.traffic.fallback
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
        self.build_info.labels(version=version).set(1)
        self.last_reload_ok.set(1)
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

    def count_in_flight(self, read: Callable[[], float]) -> None:
        """Read the in-flight gauge from `read` at scrape time: nothing to do per request."""
        if not self.in_flight_per_request:
            self.in_flight.set_function(read)

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
            # Zero series for every configured feature; a removed feature's counts stay
            # (they are cumulative: dropping them would read as a reset).
            self.traffic.feature(feature)
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
