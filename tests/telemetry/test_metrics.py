"""The per-request metrics: slots exposed by a collector, the same text as the library's.

The reference is `Children`, the prometheus_client metrics the slots replace in one
process (and still used in multiprocess mode): the same calls on both must give the same
exposition, only the `_created` timestamps differing (each is its series' creation time).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from proxy.config.load import parse_config
from proxy.config.values import Config
from proxy.errors import FailureReason
from proxy.rollout.routing import Reason, Side
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.traffic import LATENCY_BUCKETS, Children, Recorder, Slots

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = (
    "rollout_requests",
    "rollout_request_duration_seconds",
    "rollout_upstream_errors",
    "rollout_fallbacks",
    "rollout_routing_decisions",
)
Key = tuple[str, frozenset[tuple[str, str]]]


def config(*features: str) -> Config:
    lines = "".join(f"    {name}: {{paths: [/{name}]}}\n" for name in features)
    return parse_config(
        "upstreams:\n"
        "  signal: {url: http://127.0.0.1:8000}\n"
        "  legacy: {url: http://127.0.0.1:8001}\n"
        "rollout:\n"
        "  percentage: 10\n" + ("  features:\n" + lines if features else "")
    )


def families(registry: CollectorRegistry) -> dict[str, tuple[str, str]]:
    """Type and HELP of every per-request family (the `_created` gauges included)."""
    text = generate_latest(registry).decode()
    return {
        f.name: (f.type, f.documentation)
        for f in text_string_to_metric_families(text)
        if f.name.startswith(FAMILIES)
    }


def samples(registry: CollectorRegistry) -> tuple[dict[Key, float], set[Key]]:
    """The per-request samples by name and labels, and which series have `_created`."""
    values: dict[Key, float] = {}
    created: set[Key] = set()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if not s.name.startswith(FAMILIES):
                continue
            key = (s.name, frozenset(s.labels.items()))
            if s.name.endswith("_created"):
                created.add(key)
            else:
                values[key] = s.value
    return values, created


def key(name: str, **labels: str) -> Key:
    return (name, frozenset(labels.items()))


def traffic(recorder: Recorder) -> None:
    """A sequence of calls touching every family, both sides and the bucket edges."""
    for feature in ("default", "alpha"):
        recorder.feature(feature)
    recorder.routed(Side.SIGNAL, Reason.BUCKET)
    recorder.routed(Side.LEGACY, Reason.NO_SESSION)
    recorder.routed(Side.LEGACY, Reason.NO_SESSION)
    recorder.answered(Side.SIGNAL, "alpha", "GET", 200, 0.2)
    recorder.answered(Side.SIGNAL, "alpha", "GET", 200, 0.5)
    recorder.answered(Side.SIGNAL, "alpha", "PUT", 404, 0.0001)
    recorder.answered(Side.LEGACY, "default", "BREW", 502, 31.0)
    recorder.answered(Side.LEGACY, "late", "POST", 200, 0.03)  # a feature never configured
    recorder.upstream_error(Side.SIGNAL, FailureReason.TIMEOUT)
    recorder.fallback("alpha", FailureReason.TIMEOUT)
    recorder.fallback("alpha", FailureReason.TIMEOUT)


def test_slots_expose_what_the_prometheus_client_metrics_expose() -> None:
    slots, children = CollectorRegistry(), CollectorRegistry()
    traffic(Slots(slots))
    traffic(Children(children))
    assert families(slots) == families(children)
    assert samples(slots) == samples(children)
    # the same series in the same order: the text differs in the _created values only
    strip = [line.rpartition(" ")[0] for line in generate_latest(slots).decode().splitlines()]
    assert strip == [
        line.rpartition(" ")[0] for line in generate_latest(children).decode().splitlines()
    ]


def test_openmetrics_exposition_matches_too() -> None:
    slots, children = CollectorRegistry(), CollectorRegistry()
    traffic(Slots(slots))
    traffic(Children(children))

    def shape(registry: CollectorRegistry) -> list[str]:
        return [
            line.rpartition(" ")[0] for line in generate_openmetrics(registry).decode().split("\n")
        ]

    assert shape(slots) == shape(children)
    assert 'rollout_request_duration_seconds_created{feature="alpha",upstream="signal"}' in (
        shape(slots)
    )


def test_figures_are_the_calls_counted_by_hand() -> None:
    registry = CollectorRegistry()
    traffic(Slots(registry))
    values, created = samples(registry)
    requests = "rollout_requests_total"
    assert values[key(requests, upstream="signal", feature="alpha", method="GET", code="200")] == 2
    assert (
        values[key(requests, upstream="legacy", feature="default", method="other", code="502")] == 1
    )
    assert sum(v for (name, _), v in values.items() if name == requests) == 5
    bucket = "rollout_request_duration_seconds_bucket"
    signal_alpha = {
        float(dict(labels)["le"]): v
        for (name, labels), v in values.items()
        if name == bucket
        and dict(labels)["upstream"] == "signal"
        and dict(labels)["feature"] == "alpha"
    }
    assert signal_alpha == {
        **{b: 1.0 for b in LATENCY_BUCKETS if b < 0.2},  # 0.0001 s, in every bucket from the first
        0.2: 2.0,
        0.3: 2.0,
        **{b: 3.0 for b in LATENCY_BUCKETS if b >= 0.5},
        float("inf"): 3.0,
    }
    at = {"upstream": "signal", "feature": "alpha"}
    assert values[key("rollout_request_duration_seconds_count", **at)] == 3
    assert values[key("rollout_request_duration_seconds_sum", **at)] == pytest.approx(0.7001)
    at = {"upstream": "legacy", "feature": "default"}
    assert values[key(bucket, le="30.0", **at)] == 0  # 31 s: past the last bound, +Inf only
    assert values[key(bucket, le="+Inf", **at)] == 1
    assert (
        values[key("rollout_routing_decisions_total", upstream="legacy", reason="no_session")] == 2
    )
    assert values[key("rollout_upstream_errors_total", upstream="signal", reason="timeout")] == 1
    assert values[key("rollout_fallbacks_total", feature="alpha", reason="timeout")] == 2
    # every series carries its creation time, as prometheus_client's do
    assert {
        (name.rsplit("_", 1)[0], labels) for name, labels in values if name.endswith("_total")
    } == {(name.rsplit("_", 1)[0], labels) for name, labels in created if "duration" not in name}


@pytest.mark.parametrize(
    ("seconds", "lowest"),
    [(0.2, 0.2), (0.5, 0.5), (0.2000001, 0.3), (0.4999999, 0.5), (0.005, 0.005), (30.0, 30.0)],
)
def test_a_value_on_a_bound_lands_in_that_bucket(seconds: float, lowest: float) -> None:
    registry = CollectorRegistry()
    slots = Slots(registry)
    slots.answered(Side.SIGNAL, "default", "GET", 200, seconds)
    values, _ = samples(registry)
    buckets = {
        float(dict(labels)["le"]): v
        for (name, labels), v in values.items()
        if name.endswith("_bucket")
    }
    assert buckets == {b: float(b >= lowest) for b in (*LATENCY_BUCKETS, float("inf"))}


def test_zero_series_exist_for_every_side_reason_and_configured_feature() -> None:
    metrics = Metrics("test")
    metrics.apply_config(config("alpha", "beta"), guard_tripped=False)
    values, _ = samples(metrics.exposition)
    for side in Side:
        for reason in Reason:
            assert (
                values[
                    key("rollout_routing_decisions_total", upstream=side.value, reason=reason.value)
                ]
                == 0
            )
        for error in FailureReason:
            assert (
                values[
                    key("rollout_upstream_errors_total", upstream=side.value, reason=error.value)
                ]
                == 0
            )
        for feature in ("default", "alpha", "beta"):
            at = {"upstream": side.value, "feature": feature}
            assert values[key("rollout_request_duration_seconds_count", **at)] == 0
            assert values[key("rollout_request_duration_seconds_bucket", le="+Inf", **at)] == 0
    for feature in ("default", "alpha", "beta"):
        for error in FailureReason:
            assert values[key("rollout_fallbacks_total", feature=feature, reason=error.value)] == 0
    # requests have no series until one is answered (control/sources.py relies on it)
    assert not [name for name, _ in values if name == "rollout_requests_total"]


def test_a_removed_feature_keeps_its_counts_but_loses_its_gauges() -> None:
    metrics = Metrics("test")
    metrics.apply_config(config("alpha", "beta"), guard_tripped=False)
    metrics.answered(Side.SIGNAL, "beta", "GET", 200, 0.01)
    metrics.fallback("beta", FailureReason.RESET)
    metrics.apply_config(config("alpha"), guard_tripped=False)
    values, _ = samples(metrics.exposition)
    at = {"upstream": "signal", "feature": "beta"}
    # cumulative series stay: dropping them would read as a counter reset
    assert values[key("rollout_request_duration_seconds_count", **at)] == 1
    assert values[key("rollout_requests_total", method="GET", code="200", **at)] == 1
    assert values[key("rollout_fallbacks_total", feature="beta", reason="reset")] == 1
    text = generate_latest(metrics.exposition).decode()
    assert 'rollout_percentage{feature="beta"}' not in text
    assert 'rollout_percentage{feature="alpha"}' in text


def test_made_up_methods_share_one_series_and_no_count_is_lost() -> None:
    registry = CollectorRegistry()
    slots = Slots(registry)
    for i in range(20_000):  # past the 10,000 keys the old child cache cleared at
        slots.answered(Side.LEGACY, "default", f"M{i}", 200, 0.01)
    slots.answered(Side.LEGACY, "default", "GET", 200, 0.01)
    values, _ = samples(registry)
    requests = {
        labels: v for (name, labels), v in values.items() if name == "rollout_requests_total"
    }
    assert requests == {
        frozenset(
            {("upstream", "legacy"), ("feature", "default"), ("method", "other"), ("code", "200")}
        ): 20_000,
        frozenset(
            {("upstream", "legacy"), ("feature", "default"), ("method", "GET"), ("code", "200")}
        ): 1,
    }


def test_recording_between_the_families_of_one_collect_is_safe() -> None:
    registry = CollectorRegistry()
    slots = Slots(registry)
    slots.answered(Side.SIGNAL, "default", "GET", 200, 0.01)
    collecting = iter(slots.collect())
    first = next(collecting)
    # new series in every dict while the collect is half-way (the loop may run between)
    for n in range(50):
        slots.answered(Side.LEGACY, f"f{n}", "GET", 200 + n, 0.01)
        slots.fallback(f"f{n}", FailureReason.CONNECT)
    rest = list(collecting)
    assert first.name == "rollout_requests"
    assert [f.name for f in rest] == list(FAMILIES[1:])


def test_the_metrics_pick_slots_in_one_process() -> None:
    metrics = Metrics("test")
    assert isinstance(metrics.traffic, Slots)
    calls: list[Callable[..., None]] = [metrics.routed, metrics.answered, metrics.fallback]
    assert all(getattr(call, "__self__", None) is metrics.traffic for call in calls)


MULTIPROCESS = textwrap.dedent(
    """
    from proxy.errors import FailureReason
    from proxy.rollout.routing import Reason, Side
    from proxy.telemetry.metrics import Metrics
    from proxy.telemetry.traffic import Children

    metrics = Metrics("test")
    assert isinstance(metrics.traffic, Children), metrics.traffic
    metrics.routed(Side.SIGNAL, Reason.BUCKET)
    metrics.answered(Side.SIGNAL, "default", "GET", 200, 0.2)
    metrics.answered(Side.SIGNAL, "default", "GET", 200, 0.25)
    metrics.upstream_error(Side.LEGACY, FailureReason.RESET)
    metrics.fallback("default", FailureReason.CONNECT)
    """
)


def test_multiprocess_mode_writes_through_prometheus_client(tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for _ in range(2):  # two workers: the admin worker's collector sums them
        subprocess.run(
            [sys.executable, "-c", MULTIPROCESS], cwd=ROOT, env=env, check=True, timeout=60
        )
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    values, _ = samples(registry)
    at = {"upstream": "signal", "feature": "default"}
    assert values[key("rollout_requests_total", method="GET", code="200", **at)] == 4
    assert values[key("rollout_request_duration_seconds_bucket", le="0.2", **at)] == 2
    assert values[key("rollout_request_duration_seconds_bucket", le="0.3", **at)] == 4
    assert values[key("rollout_request_duration_seconds_sum", **at)] == pytest.approx(0.9)
    assert values[key("rollout_routing_decisions_total", upstream="signal", reason="bucket")] == 2
    assert values[key("rollout_routing_decisions_total", upstream="legacy", reason="guard")] == 0
    assert values[key("rollout_upstream_errors_total", upstream="legacy", reason="reset")] == 2
    assert values[key("rollout_fallbacks_total", feature="default", reason="connect")] == 2
