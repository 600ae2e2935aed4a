"""Who a change moves, from the bucket rule alone (SPEC 14 "Preview"). Pure, no I/O.

A session is on signal iff its bucket is below `round(percentage * 100)` (SPEC 3), so the
buckets that change side between two states form one range per feature, and its share
of the 10,000 buckets is exact. Emergency and a tripped guard are states like any
other: everyone (emergency) or everyone but the test sessions (guard) is on legacy.

A seed change is the exception: every session gets a new bucket, so no range of old
buckets says who moves. Each old-signal session then stays on signal with the chance
p_new and each old-legacy one joins it with the same chance; the shares are
*expected* (p_old (1 - p_new) to legacy, p_new (1 - p_old) to signal) and marked so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypedDict

from proxy.config.values import DEFAULT_FEATURE, Config
from proxy.rollout.routing import BUCKETS, Side, bucket, threshold


@dataclass(frozen=True, slots=True)
class RoutingState:
    """The inputs of SPEC 3's decision that a change can move, per feature."""

    percentages: Mapping[str, float]  # feature -> percentage ("default": the global)
    seed: str = "rollout"
    emergency: bool = False
    guard_tripped: bool = False
    test_sessions: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, config: Config, *, guard_tripped: bool = False) -> RoutingState:
        r = config.rollout
        return cls(
            config.feature_percentages(), r.seed, r.emergency, guard_tripped, r.test_sessions
        )

    def percentage(self, feature: str) -> float:
        """A feature this state does not name routes by the global percentage."""
        return self.percentages.get(feature, self.percentages[DEFAULT_FEATURE])

    def signal_below(self, feature: str) -> int:
        """Buckets below this go to signal by the bucket rule (0: nobody)."""
        if self.emergency or self.guard_tripped:
            return 0
        return threshold(self.percentage(feature))

    @property
    def held(self) -> str | None:
        """What keeps everyone off signal by bucket, if anything."""
        if self.emergency:
            return "emergency"
        return "guard tripped" if self.guard_tripped else None

    def routes_like(self, other: RoutingState) -> bool:
        return (
            self.seed == other.seed
            and self.emergency == other.emergency
            and self.guard_tripped == other.guard_tripped
            and self.test_sessions == other.test_sessions
            and all(
                threshold(self.percentage(f)) == threshold(other.percentage(f))
                for f in {*self.percentages, *other.percentages}
            )
        )


def side_of(session_id: str, state: RoutingState, feature: str = DEFAULT_FEATURE) -> Side:
    """SPEC 3's order for one known id (the test sessions, whose ids the config holds)."""
    if state.emergency:
        return Side.LEGACY
    if session_id in state.test_sessions:
        return Side.SIGNAL
    if state.guard_tripped:
        return Side.LEGACY
    return (
        Side.SIGNAL if bucket(session_id, state.seed) < state.signal_below(feature) else Side.LEGACY
    )


@dataclass(frozen=True, slots=True)
class Movement:
    """Of the sessions whose bucket (under the served seed) is in [start, stop),
    `fraction` change side: 1 for a percentage change, an expected share for a new seed."""

    start: int = 0
    stop: int = 0
    fraction: float = 1.0

    @property
    def buckets(self) -> int:
        return max(0, self.stop - self.start) if self.fraction > 0 else 0

    @property
    def share(self) -> float:
        """Percent of all sessions that change side this way (2 decimals when exact)."""
        return round(self.buckets * self.fraction * 100 / BUCKETS, 4)


NOBODY = Movement()


class MoveFigures(TypedDict):
    """The bucket rule's part of a feature's preview (`FeatureMove.as_dict`)."""

    feature: str
    before: float  # percent of buckets on signal now (0 under emergency or a tripped guard)
    after: float
    before_held: str | None  # "emergency", "guard tripped": why `before` is 0
    after_held: str | None
    share: float  # percent of buckets that change side (expected when `expected`)
    expected: bool  # a seed change: shares are expected, not exact
    to_signal_share: float
    to_legacy_share: float
    test_sessions_to_signal: int  # configured test ids that change side, exactly
    test_sessions_to_legacy: int


@dataclass(frozen=True, slots=True)
class FeatureMove:
    feature: str
    before: int  # signal_below before and after (buckets, 0-10,000)
    after: int
    before_held: str | None
    after_held: str | None
    to_signal: Movement
    to_legacy: Movement
    reshuffled: bool  # the seed changes
    # Test sessions' requests are counted apart (no bucket); they all change side only
    # when emergency is switched.
    pinned_to: Side | None
    test_sessions_to_signal: int
    test_sessions_to_legacy: int

    @property
    def share(self) -> float:
        return round(self.to_signal.share + self.to_legacy.share, 4)

    def as_dict(self) -> MoveFigures:
        return {
            "feature": self.feature,
            "before": self.before / 100,
            "after": self.after / 100,
            "before_held": self.before_held,
            "after_held": self.after_held,
            "share": self.share,
            "expected": self.reshuffled,
            "to_signal_share": self.to_signal.share,
            "to_legacy_share": self.to_legacy.share,
            "test_sessions_to_signal": self.test_sessions_to_signal,
            "test_sessions_to_legacy": self.test_sessions_to_legacy,
        }


def move_of(before: RoutingState, after: RoutingState, feature: str) -> FeatureMove:
    """One feature: the bucket ranges that change side, and the test ids that do."""
    old, new = before.signal_below(feature), after.signal_below(feature)
    if before.seed != after.seed:
        p_new = new / BUCKETS
        to_signal = Movement(old, BUCKETS, p_new)
        to_legacy = Movement(0, old, 1 - p_new)
    elif new > old:
        to_signal, to_legacy = Movement(old, new), NOBODY
    else:
        to_signal, to_legacy = NOBODY, Movement(new, old)
    pinned_to = None
    if before.emergency != after.emergency:
        pinned_to = Side.LEGACY if after.emergency else Side.SIGNAL
    ids = before.test_sessions | after.test_sessions
    sides = [(side_of(i, before, feature), side_of(i, after, feature)) for i in sorted(ids)]
    return FeatureMove(
        feature,
        old,
        new,
        before.held,
        after.held,
        to_signal,
        to_legacy,
        before.seed != after.seed,
        pinned_to,
        sum(1 for b, a in sides if b is Side.LEGACY and a is Side.SIGNAL),
        sum(1 for b, a in sides if b is Side.SIGNAL and a is Side.LEGACY),
    )


def plan_moves(before: RoutingState, after: RoutingState) -> tuple[FeatureMove, ...]:
    """Every feature either state names, `default` first; a feature only one of them
    names routes by the other's global percentage there."""
    return tuple(move_of(before, after, f) for f in _features(before, after))


def _features(before: RoutingState, after: RoutingState) -> Iterable[str]:
    names = [DEFAULT_FEATURE]
    for name in (*before.percentages, *after.percentages):
        if name not in names:
            names.append(name)
    return names


def warnings_of(before: RoutingState, after: RoutingState) -> list[str]:
    """What an operator must read before the figures."""
    out = []
    if before.seed != after.seed:
        out.append(
            f"rollout.seed {before.seed!r} -> {after.seed!r} reshuffles every session: each "
            "gets a new bucket, so the shares below are expected, not exact"
        )
    if before.guard_tripped and not after.guard_tripped:
        out.append(
            "the guard is tripped now (everyone but the test sessions on legacy); applying a "
            "change re-arms it, so the figures count from there"
        )
    return out
