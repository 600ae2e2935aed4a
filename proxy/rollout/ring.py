"""The status page's last 15 minutes: one slot per second, per upstream, in a fixed ring.

The admin process reads its registry's cumulative counters once a second (a `Reading`,
all workers' under `--workers N`, as `/metrics` serves them); a slot is the difference
between two reads, with the reset rule and the quantile algorithm of
`proxy.rollout.counters`, so the page and the autopilot agree on what a second held.
The ring keeps `RING_SECONDS` slots whatever the traffic: memory is a constant.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypedDict

from proxy.rollout.counters import Counters, deltas, sample_between

RING_SECONDS = 900  # 15 minutes of one-second slots
SIDES = ("signal", "legacy")


@dataclass(frozen=True, slots=True)
class Reading:
    """Cumulative values at one read of the registry."""

    counters: Counters
    upgraded: Mapping[str, float]  # upstream -> upgraded connections open now (a gauge)
    shadow: Mapping[tuple[str, str], float]  # (feature, result) -> shadow comparisons


@dataclass(frozen=True, slots=True)
class UpstreamSecond:
    attempts: int  # signal: served plus fallen back; legacy: served (as the analysis counts)
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    fallbacks: int  # signal attempts replayed on legacy (0 for legacy)
    upgraded: int  # open at the end of the slot


@dataclass(frozen=True, slots=True)
class Second:
    at: float  # end of the slot, on the reader's clock
    seconds: float  # its length: the time between the two reads
    upstreams: Mapping[str, UpstreamSecond]


class UpstreamSeries(TypedDict):
    """One upstream's figures per slot, oldest first; None where a second had no request."""

    requests_per_s: list[float]
    error_rate: list[float | None]
    p50_ms: list[float | None]
    p95_ms: list[float | None]
    p99_ms: list[float | None]
    fallbacks_per_s: list[float]
    upgraded: list[int]
    requests: int  # attempts over the whole ring
    fallbacks: int


class SeriesDocument(TypedDict):
    at: list[float]  # end of each slot (unix seconds)
    seconds: int  # the ring's capacity
    upstreams: dict[str, UpstreamSeries]


def second_between(before: Reading, after: Reading) -> Second:
    """One slot: what happened between two reads."""
    sample = sample_between(before.counters, after.counters)
    fallbacks = round(sum(deltas(before.counters.fallbacks, after.counters.fallbacks).values()))
    upstreams = {}
    for name, side in (("signal", sample.signal), ("legacy", sample.legacy)):
        upstreams[name] = UpstreamSecond(
            attempts=side.attempts,
            errors=side.errors,
            p50_ms=side.p50_ms,
            p95_ms=side.p95_ms,
            p99_ms=side.p99_ms,
            fallbacks=fallbacks if name == "signal" else 0,
            upgraded=round(after.upgraded.get(name, 0.0)),
        )
    return Second(at=after.counters.read_at, seconds=sample.seconds, upstreams=upstreams)


class Ring:
    """The last `size` slots; `add` a reading each second."""

    def __init__(self, size: int = RING_SECONDS) -> None:
        self._slots: deque[Second] = deque(maxlen=size)
        self._last: Reading | None = None

    @property
    def latest(self) -> Reading | None:
        return self._last

    def add(self, reading: Reading) -> None:
        if self._last is not None and reading.counters.read_at > self._last.counters.read_at:
            self._slots.append(second_between(self._last, reading))
        self._last = reading

    def __len__(self) -> int:
        return len(self._slots)

    def series(self) -> SeriesDocument:
        slots = list(self._slots)
        return {
            "at": [round(s.at, 3) for s in slots],
            "seconds": self._slots.maxlen or 0,
            "upstreams": {name: _series(name, slots) for name in SIDES},
        }


def _series(name: str, slots: list[Second]) -> UpstreamSeries:
    out: UpstreamSeries = {
        "requests_per_s": [],
        "error_rate": [],
        "p50_ms": [],
        "p95_ms": [],
        "p99_ms": [],
        "fallbacks_per_s": [],
        "upgraded": [],
        "requests": 0,
        "fallbacks": 0,
    }
    for slot in slots:
        up = slot.upstreams[name]
        length = slot.seconds if slot.seconds > 0 else 1.0
        out["requests_per_s"].append(round(up.attempts / length, 2))
        out["error_rate"].append(round(up.errors / up.attempts, 4) if up.attempts else None)
        out["p50_ms"].append(_rounded(up.p50_ms))
        out["p95_ms"].append(_rounded(up.p95_ms))
        out["p99_ms"].append(_rounded(up.p99_ms))
        out["fallbacks_per_s"].append(round(up.fallbacks / length, 2))
        out["upgraded"].append(up.upgraded)
        out["requests"] += up.attempts
        out["fallbacks"] += up.fallbacks
    return out


def _rounded(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 2)
