"""The status page's sampler: what one collect of the registry gives the ring."""

from __future__ import annotations

import asyncio

import pytest

from proxy.errors import FailureReason
from proxy.rollout.ring import Ring
from proxy.rollout.routing import Side
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.sampler import REPLICA, read_registry, sample_forever


def busy_metrics() -> Metrics:
    metrics = Metrics("test")
    for _ in range(3):
        metrics.answered(Side.SIGNAL, "default", "GET", 200, 0.15)
    metrics.answered(Side.LEGACY, "default", "GET", 200, 0.01)
    metrics.answered(Side.LEGACY, "beta", "POST", 502, 0.01)  # two series, one upstream
    metrics.upstream_error(Side.SIGNAL, FailureReason.CONNECT)
    metrics.fallback("default", FailureReason.CONNECT)
    metrics.upgraded.labels(upstream="signal").inc(2)
    metrics.shadow_result("default", "match")
    metrics.shadow_result("default", "mismatch")
    return metrics


def test_a_read_holds_the_cumulative_figures_of_the_registry() -> None:
    got = read_registry(busy_metrics().exposition, 42.0)
    c = got.counters
    assert c.served == {(REPLICA, "signal"): 3, (REPLICA, "legacy"): 2}
    assert c.errors[(REPLICA, "signal")] == 1
    assert c.fallbacks == {REPLICA: 1}
    assert c.buckets[(REPLICA, "signal", 0.2)] == 3  # 0.15 s: in the 0.2 s bucket
    assert c.buckets[(REPLICA, "signal", 0.1)] == 0
    assert c.read_at == 42.0
    assert got.upgraded == {"signal": 2, "legacy": 0}
    assert got.shadow == {("default", "match"): 1, ("default", "mismatch"): 1}


async def test_the_sampler_fills_the_ring_until_cancelled() -> None:
    metrics = busy_metrics()
    ring = Ring()
    task = asyncio.create_task(sample_forever(ring, metrics.exposition, interval=0.01))
    try:
        for _ in range(500):  # bounded: 5 s at most
            if len(ring) >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(ring) >= 2
    # every request was made before the first read: the slots hold none of them
    assert ring.series()["upstreams"]["signal"]["requests"] == 0
    assert ring.latest is not None
