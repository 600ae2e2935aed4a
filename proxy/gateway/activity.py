"""Recent activity by bucket, for the who-moves preview (SPEC 14). No session id is kept.

Per feature, 10,000 buckets x 15 one-minute slots (a sliding 15 minutes): a request
count and a 64-bit linear-counting bitmap per bucket and slot. A request sets one bit,
taken from the same MurmurHash3 value routing computed (bucket = h mod 10,000, bit =
(h div 10,000) mod 64), so the hot path costs one increment and one OR, and a session
sets the same bit every time. The sessions of a bucket range are estimated by linear
counting on each bucket's 15 slots OR-ed together, n = ln(zeros / 64) / ln(1 - 1/64),
summed over the range (tests/gateway/test_activity.py holds it within 2 % from a few
hundred to 300,000 active sessions per feature, 30 a bucket); a bucket with every bit
set is saturated and marked so (the figure is then a floor). Fixed memory: 15 x 10,000
x (4 + 8) bytes = 1.8 MB per feature (`default` and each configured one), whatever the
traffic.

Test sessions route by their id, not their bucket, so their requests are counted apart
(`pinned`), per slot. Requests without a session id are not counted.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from functools import reduce
from operator import or_

from proxy.config.values import DEFAULT_FEATURE, Config, RolloutConfig
from proxy.rollout.routing import BUCKETS, Decision, Reason, session_hash

SLOT_SECONDS = 60
SLOTS = 15
WINDOW_SECONDS = SLOT_SECONDS * SLOTS
BITS = 64

# Linear counting per bucket by the number of bits set: n sessions set, on average,
# 64 (1 - (1 - 1/64)^n) bits; inverted, one bit set is exactly one session (the usual
# -64 ln(zeros / 64) says 1.008, a bias that adds up over thousands of buckets). All 64
# set is saturated: it is given the value of 63.5 set (a floor, flagged).
_ESTIMATE = [math.log((BITS - ones) / BITS) / math.log(1 - 1 / BITS) for ones in range(BITS)]
_ESTIMATE.append(math.log(0.5 / BITS) / math.log(1 - 1 / BITS))


@dataclass(frozen=True, slots=True)
class RangeActivity:
    """Recent activity of the sessions whose buckets lie in one range."""

    sessions: float  # estimate (linear counting), see the module docstring
    requests: int  # exact
    saturated: bool  # some bucket had every bit set: `sessions` is a floor


class _Counters:
    __slots__ = ("bits", "counts", "pinned")

    def __init__(self) -> None:
        self.counts = array("I", bytes(4 * SLOTS * BUCKETS))
        self.bits = array("Q", bytes(8 * SLOTS * BUCKETS))
        self.pinned = array("Q", bytes(8 * SLOTS))

    def clear(self, slot: int) -> None:
        start = slot * BUCKETS
        self.counts[start : start + BUCKETS] = _ZERO_COUNTS
        self.bits[start : start + BUCKETS] = _ZERO_BITS
        self.pinned[slot] = 0


_ZERO_COUNTS = array("I", bytes(4 * BUCKETS))
_ZERO_BITS = array("Q", bytes(8 * BUCKETS))


class Activity:
    """The counters of every configured feature; owned by `Runtime`, survives reloads.

    `now` is monotonic seconds (the event loop's clock), given by the caller.
    """

    def __init__(self, config: Config, now: float) -> None:
        self._features: dict[str, _Counters] = {}
        self._seed = config.rollout.seed
        self._minute = int(now // SLOT_SECONDS)
        self._next_minute = (self._minute + 1) * SLOT_SECONDS  # a compare per request
        self._slot = self._minute % SLOTS
        self._offset = self._slot * BUCKETS
        self.configure(config)

    def configure(self, config: Config) -> None:
        """After a reload: counters for new features, none for removed ones. A new seed
        gives every session a new bucket, so the counts start afresh."""
        names = [DEFAULT_FEATURE, *(f.name for f in config.rollout.features)]
        if config.rollout.seed != self._seed:
            self._seed = config.rollout.seed
            self._features.clear()
        self._features = {n: self._features.get(n) or _Counters() for n in names}

    @property
    def features(self) -> Iterable[str]:
        return self._features.keys()

    @property
    def memory_bytes(self) -> int:
        per = SLOTS * BUCKETS * (4 + 8) + SLOTS * 8
        return per * len(self._features)

    def count(
        self, decision: Decision, session_id: str | None, rollout: RolloutConfig, now: float
    ) -> None:
        """One routed request (the hot path: one increment and one OR)."""
        if session_id is None:
            return
        if now >= self._next_minute:
            self._advance(int(now // SLOT_SECONDS))
        counters = self._features.get(decision.feature)
        if counters is None:  # a reload is being applied between two lines
            return
        h = decision.hash
        if h is None:
            if decision.reason is Reason.TEST_SESSION or session_id in rollout.test_sessions:
                counters.pinned[self._slot] += 1
                return
            # Emergency: routing needed no bucket, the preview of clearing it does.
            h = session_hash(session_id, rollout.seed)
        q, b = divmod(h, BUCKETS)
        i = self._offset + b
        counters.counts[i] += 1
        counters.bits[i] |= 1 << (q & (BITS - 1))

    def _advance(self, minute: int) -> None:
        """Clear the slots of the minutes passed since the last request (at most all)."""
        passed = minute - self._minute
        if passed <= 0:  # the clock never goes back; a caller's older `now` is this minute
            return
        for m in range(self._minute + 1, self._minute + 1 + min(passed, SLOTS)):
            for counters in self._features.values():
                counters.clear(m % SLOTS)
        self._minute = minute
        self._next_minute = (minute + 1) * SLOT_SECONDS
        self._slot = minute % SLOTS
        self._offset = self._slot * BUCKETS

    def buckets(self, feature: str, start: int, stop: int, now: float) -> RangeActivity:
        """The sessions with a bucket in [start, stop) seen in the last 15 minutes."""
        self._advance(int(now // SLOT_SECONDS))
        counters = self._features.get(feature)
        if counters is None or stop <= start:
            return RangeActivity(0.0, 0, False)
        requests = 0
        slices = []
        for slot in range(SLOTS):
            offset = slot * BUCKETS
            requests += sum(counters.counts[offset + start : offset + stop])
            slices.append(counters.bits[offset + start : offset + stop])
        merged = reduce(lambda a, b: array("Q", map(or_, a, b)), slices)
        ones = [w.bit_count() for w in merged]
        sessions = math.fsum(_ESTIMATE[n] for n in ones if n)
        return RangeActivity(sessions, requests, BITS in ones)

    def pinned(self, feature: str, now: float) -> int:
        """Test sessions' requests in the last 15 minutes."""
        self._advance(int(now // SLOT_SECONDS))
        counters = self._features.get(feature)
        return 0 if counters is None else sum(counters.pinned)
