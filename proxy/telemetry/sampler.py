"""Feeds the status page's ring: one read of the exposition registry a second.

The exposition registry is what `/metrics` serves: under `rollout serve --workers N` the
multiprocess collector's sum over every worker, so the page shows all of them. Reading it
in process costs one collect a second, whatever the traffic; the request path does
nothing for the page.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from typing import TypeVar

from prometheus_client import CollectorRegistry

from proxy.rollout.counters import Counters
from proxy.rollout.ring import Reading, Ring

log = logging.getLogger("rollout")
K = TypeVar("K", bound=Hashable)

SAMPLE_INTERVAL = 1.0
REPLICA = "local"  # one process's registry: a single replica for the reset rule


def read_registry(registry: CollectorRegistry, read_at: float) -> Reading:
    """The cumulative figures the ring needs, from one collect of `registry`."""
    served: dict[tuple[str, str], float] = {}
    errors: dict[tuple[str, str], float] = {}
    fallbacks = 0.0
    buckets: dict[tuple[str, str, float], float] = {}
    upgraded: dict[str, float] = {}
    shadow: dict[tuple[str, str], float] = {}
    tripped = False
    for family in registry.collect():
        for s in family.samples:
            upstream = s.labels.get("upstream", "")
            if s.name == "rollout_requests_total":
                _add(served, (REPLICA, upstream), s.value)
            elif s.name == "rollout_upstream_errors_total":
                _add(errors, (REPLICA, upstream), s.value)
            elif s.name == "rollout_fallbacks_total":
                fallbacks += s.value
            elif s.name == "rollout_request_duration_seconds_bucket":
                _add(buckets, (REPLICA, upstream, float(s.labels["le"])), s.value)
            elif s.name == "rollout_upgraded_connections":
                _add(upgraded, upstream, s.value)
            elif s.name == "rollout_shadow_requests_total":
                _add(shadow, (s.labels["feature"], s.labels["result"]), s.value)
            elif s.name == "rollout_guard_tripped":
                tripped = tripped or s.value > 0
    counters = Counters(served, errors, {REPLICA: fallbacks}, buckets, tripped, read_at)
    return Reading(counters, upgraded, shadow)


async def sample_forever(
    ring: Ring,
    registry: CollectorRegistry,
    *,
    interval: float = SAMPLE_INTERVAL,
    clock: Callable[[], float] = time.time,
) -> None:
    """Add a reading to `ring` every `interval` seconds until cancelled."""
    while True:
        try:
            ring.add(read_registry(registry, clock()))
        except (OSError, ValueError, KeyError) as exc:
            # A worker's metrics file being rewritten can be caught half-written; the
            # next second reads it whole.
            log.debug("status page sample skipped: %s", exc)
        await asyncio.sleep(interval)


def _add(into: dict[K, float], key: K, value: float) -> None:
    into[key] = into.get(key, 0.0) + value
