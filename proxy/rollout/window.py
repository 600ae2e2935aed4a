"""A sliding window of attempts: counts, errors and a latency histogram, bounded memory.

The window is a ring of per-second slots; each slot holds a count, an error count and a
fixed log-spaced latency histogram. Running totals are kept as slots enter and leave, so
recording is O(1) and memory is `window_seconds x len(EDGES_MS)` integers however many
attempts are recorded. Quantiles are read from the merged histogram (8 % resolution).
The clock is injected, so tests drive time instead of sleeping.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

Clock = Callable[[], float]

# Bucket upper edges in ms, growing by 8 % from 0.5 ms past one hour (the longest timeout
# the config accepts, so no attempt overflows), plus 200 and 500 exactly (the promotion and
# rollback P95 criteria) so a check at those values is exact.
_GROWTH = 1.08
MAX_LATENCY_MS = 3_600_000.0
_EDGES: list[float] = sorted(
    {
        round(0.5 * _GROWTH**i, 3)
        for i in range(int(math.log(MAX_LATENCY_MS / 0.5) / math.log(_GROWTH)) + 2)
    }
    | {200.0, 500.0}
)
EDGES_MS: tuple[float, ...] = tuple(_EDGES)


class WindowFigures(TypedDict):
    """`WindowStats` as plain data, rounded for display (the /-/status document)."""

    requests: int
    errors: int
    error_rate: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True, slots=True)
class WindowStats:
    requests: int
    errors: int
    error_rate: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None

    def as_dict(self) -> WindowFigures:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 6),
            "p50_ms": _round(self.p50_ms),
            "p95_ms": _round(self.p95_ms),
            "p99_ms": _round(self.p99_ms),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class _Slot:
    __slots__ = ("errors", "histogram", "requests", "second")

    def __init__(self) -> None:
        self.second = -1
        self.requests = 0
        self.errors = 0
        self.histogram = [0] * (len(EDGES_MS) + 1)


class Window:
    """Attempts over the last `seconds` seconds."""

    def __init__(self, seconds: int, clock: Clock = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._slots = [_Slot() for _ in range(seconds)]
        self._requests = 0
        self._errors = 0
        self._histogram = [0] * (len(EDGES_MS) + 1)

    def record(self, *, ok: bool, latency_ms: float) -> None:
        # `_current`, inlined: this runs for every attempt.
        second = int(self._clock())
        slot = self._slots[second % self.seconds]
        if slot.second != second:
            self._expire(second)
            slot.second = second
        index = bisect.bisect_left(EDGES_MS, latency_ms)
        slot.requests += 1
        slot.histogram[index] += 1
        self._requests += 1
        self._histogram[index] += 1
        if not ok:
            slot.errors += 1
            self._errors += 1

    def totals(self) -> tuple[int, int]:
        """(requests, errors) as of the last record: O(1), for the hot path."""
        return self._requests, self._errors

    def stats(self) -> WindowStats:
        self._expire(int(self._clock()))
        n = self._requests
        rate = self._errors / n if n else 0.0
        return WindowStats(
            requests=n,
            errors=self._errors,
            error_rate=rate,
            p50_ms=self._quantile(0.50),
            p95_ms=self._quantile(0.95),
            p99_ms=self._quantile(0.99),
        )

    def clear(self) -> None:
        for slot in self._slots:
            self._drop(slot)
            slot.second = -1

    def _current(self) -> _Slot:
        second = int(self._clock())
        slot = self._slots[second % self.seconds]
        if slot.second != second:
            self._expire(second)
            slot.second = second
        return slot

    def _expire(self, now: int) -> None:
        oldest = now - self.seconds + 1
        for slot in self._slots:
            if slot.second != -1 and slot.second < oldest:
                self._drop(slot)
                slot.second = -1

    def _drop(self, slot: _Slot) -> None:
        if slot.requests:
            self._requests -= slot.requests
            self._errors -= slot.errors
            for i, count in enumerate(slot.histogram):
                if count:
                    self._histogram[i] -= count
                    slot.histogram[i] = 0
            slot.requests = slot.errors = 0

    def _quantile(self, q: float) -> float | None:
        """Upper edge of the bucket holding the q-th sample: never under-reports."""
        if not self._requests:
            return None
        rank = math.ceil(q * self._requests)
        seen = 0
        for i, count in enumerate(self._histogram):
            seen += count
            if seen >= rank:
                return EDGES_MS[min(i, len(EDGES_MS) - 1)]
        return EDGES_MS[-1]
