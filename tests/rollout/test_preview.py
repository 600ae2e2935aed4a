"""proxy.rollout.preview: which buckets and test ids change side, per feature."""

from __future__ import annotations

import random

import pytest

from proxy.config.values import Config, Feature, RolloutConfig, Upstream, Upstreams
from proxy.rollout.preview import NOBODY, Movement, RoutingState, plan_moves, side_of, warnings_of
from proxy.rollout.routing import BUCKETS, Side, bucket, choose_upstream

SEED = "rollout"
VECTORS = {
    "alice": 9177,
    "bob": 1133,
    "carol": 7131,
    "qa-tester-1": 3492,
    "session-000001": 5359,
    "会话-42": 520,
}


def state(pct: float = 10.0, **kw: object) -> RoutingState:
    percentages = {"default": pct, **kw.pop("features", {})}  # type: ignore[dict-item]
    return RoutingState(percentages, **kw)  # type: ignore[arg-type]


def moved_ids(before: RoutingState, after: RoutingState, feature: str = "default") -> set[str]:
    """The vectors whose side differs, by SPEC 3 itself (the oracle)."""
    return {i for i in VECTORS if side_of(i, before, feature) is not side_of(i, after, feature)}


def in_range(session_id: str, m: Movement) -> bool:
    return m.buckets > 0 and m.start <= VECTORS[session_id] < m.stop


@pytest.mark.parametrize(
    ("old", "new", "to_signal", "to_legacy", "share", "moving"),
    [
        (10, 30, Movement(1000, 3000), NOBODY, 20.0, {"bob"}),
        (30, 10, NOBODY, Movement(1000, 3000), 20.0, {"bob"}),
        (0, 100, Movement(0, 10000), NOBODY, 100.0, set(VECTORS)),
        (100, 0, NOBODY, Movement(0, 10000), 100.0, set(VECTORS)),
        (0, 0, NOBODY, Movement(0, 0), 0.0, set()),
        (91.77, 91.78, Movement(9177, 9178), NOBODY, 0.01, {"alice"}),
        (91.78, 91.77, NOBODY, Movement(9177, 9178), 0.01, {"alice"}),
        (5.2, 5.21, Movement(520, 521), NOBODY, 0.01, {"会话-42"}),
        (35, 53.6, Movement(3500, 5360), NOBODY, 18.6, {"session-000001"}),
        (34.92, 71.31, Movement(3492, 7131), NOBODY, 36.39, {"qa-tester-1", "session-000001"}),
        (12.34, 56.78, Movement(1234, 5678), NOBODY, 44.44, {"qa-tester-1", "session-000001"}),
    ],
)
def test_a_percentage_change_moves_one_range_exactly(
    old: float,
    new: float,
    to_signal: Movement,
    to_legacy: Movement,
    share: float,
    moving: set[str],
) -> None:
    [move] = plan_moves(state(old), state(new))
    assert (move.to_signal, move.to_legacy) == (to_signal, to_legacy)
    assert move.share == share
    assert move.as_dict()["share"] == share
    assert f"{move.share:.2f}" == f"{share:.2f}"
    assert not move.reshuffled
    assert moved_ids(state(old), state(new)) == moving
    # The ranges say the same as the rule, id by id.
    assert {i for i in VECTORS if in_range(i, move.to_signal) or in_range(i, move.to_legacy)} == (
        moving
    )


def test_ranges_agree_with_routing_for_many_ids() -> None:
    rng = random.Random(7)
    ids = [f"{rng.getrandbits(64):x}" for _ in range(2000)]
    for old, new in [(10, 30), (50, 0.01), (99.99, 100), (0, 0.5)]:
        [move] = plan_moves(state(old), state(new))
        before, after = RolloutConfig(percentage=old), RolloutConfig(percentage=new)
        for i in ids:
            changed = choose_upstream(before, i, "/").side != choose_upstream(after, i, "/").side
            b = bucket(i, SEED)
            inside = any(
                m.buckets and m.start <= b < m.stop for m in (move.to_signal, move.to_legacy)
            )
            assert changed == inside, (old, new, i)


def test_emergency_moves_everyone_on_signal_and_the_test_sessions() -> None:
    before = state(30, test_sessions=frozenset({"qa-tester-1", "alice"}))
    after = state(30, emergency=True, test_sessions=frozenset({"qa-tester-1", "alice"}))
    [on] = plan_moves(before, after)
    assert (on.to_signal, on.to_legacy, on.share) == (NOBODY, Movement(0, 3000), 30.0)
    assert on.pinned_to is Side.LEGACY
    assert (on.as_dict()["before_held"], on.as_dict()["after_held"]) == (None, "emergency")
    assert (on.test_sessions_to_signal, on.test_sessions_to_legacy) == (0, 2)
    [off] = plan_moves(after, before)
    assert (off.to_signal, off.to_legacy, off.share) == (Movement(0, 3000), NOBODY, 30.0)
    assert off.pinned_to is Side.SIGNAL
    assert (off.test_sessions_to_signal, off.test_sessions_to_legacy) == (2, 0)
    assert moved_ids(after, before) == {"bob", "会话-42", "qa-tester-1", "alice"}


def test_a_tripped_guard_is_the_served_state() -> None:
    tripped = state(30, guard_tripped=True, test_sessions=frozenset({"alice"}))
    [move] = plan_moves(tripped, state(30, test_sessions=frozenset({"alice"})))
    assert (move.to_signal, move.share) == (Movement(0, 3000), 30.0)
    assert move.pinned_to is None  # test sessions stay on signal through a trip
    assert move.as_dict()["before_held"] == "guard tripped"
    assert (move.test_sessions_to_signal, move.test_sessions_to_legacy) == (0, 0)
    assert any("guard is tripped" in w for w in warnings_of(tripped, state(30)))


def test_features_with_their_own_percentage() -> None:
    before = state(10, features={"anomaly": 50.0, "limitUp": 10.0})
    after = state(30, features={"anomaly": 50.0, "limitUp": 30.0, "newOne": 5.0})
    moves = {m.feature: m for m in plan_moves(before, after)}
    assert list(moves) == ["default", "anomaly", "limitUp", "newOne"]
    assert moves["default"].to_signal == Movement(1000, 3000)
    assert moves["anomaly"].share == 0.0
    assert moves["limitUp"].to_signal == Movement(1000, 3000)
    # A feature only the proposed state names was routed by the global percentage.
    assert moves["newOne"].to_legacy == Movement(500, 1000)
    assert moved_ids(before, after, "anomaly") == set()
    assert moved_ids(before, after, "limitUp") == {"bob"}


def test_test_session_list_changes_count_ids_exactly() -> None:
    before = state(10, test_sessions=frozenset({"alice", "bob"}))
    after = state(10, test_sessions=frozenset({"carol", "bob"}))
    [move] = plan_moves(before, after)
    assert move.share == 0.0
    # alice (9177) leaves the list: legacy; carol (7131) joins it: signal; bob stays.
    assert (move.test_sessions_to_signal, move.test_sessions_to_legacy) == (1, 1)


@pytest.mark.parametrize(("old", "new"), [(10, 30), (50, 50), (0, 100), (30, 0), (100, 100)])
def test_a_seed_change_gives_expected_shares_and_warns(old: float, new: float) -> None:
    before, after = state(old), state(new, seed="other")
    [move] = plan_moves(before, after)
    p_old, p_new = old / 100, new / 100
    assert move.reshuffled
    assert move.as_dict()["expected"]
    assert move.to_signal.share == pytest.approx(100 * p_new * (1 - p_old))
    assert move.to_legacy.share == pytest.approx(100 * p_old * (1 - p_new))
    assert move.share == pytest.approx(100 * (p_old * (1 - p_new) + p_new * (1 - p_old)))
    [warning] = warnings_of(before, after)
    assert "reshuffles every session" in warning
    assert "expected" in warning


def test_expected_seed_share_matches_sessions_moving() -> None:
    rng = random.Random(3)
    ids = [f"{rng.getrandbits(64):x}" for _ in range(20_000)]
    before, after = state(30), state(30, seed="other")
    [move] = plan_moves(before, after)
    moved = sum(side_of(i, before) is not side_of(i, after) for i in ids)
    assert moved / len(ids) * 100 == pytest.approx(move.share, abs=1.5)  # 42 %, binomial


def test_state_of_a_config() -> None:
    config = Config(
        upstreams=Upstreams(Upstream("signal", "http://a"), Upstream("legacy", "http://b")),
        rollout=RolloutConfig(
            percentage=20,
            seed="s",
            features=(Feature("f", ("/f",), 5.0), Feature("g", ("/g",))),
        ),
    )
    s = RoutingState.of(config, guard_tripped=True)
    assert dict(s.percentages) == {"default": 20, "f": 5.0, "g": 20}
    assert (s.seed, s.guard_tripped, s.signal_below("f")) == ("s", True, 0)
    assert RoutingState.of(config).signal_below("f") == 500
    assert RoutingState.of(config).signal_below("unknown") == 2000
    assert s.routes_like(s)
    assert not s.routes_like(RoutingState.of(config))


def test_every_vector_lands_where_its_bucket_says() -> None:
    for session_id, b in VECTORS.items():
        assert bucket(session_id, SEED) == b
        assert side_of(session_id, state(b / 100)) is Side.LEGACY
        assert side_of(session_id, state((b + 1) / 100)) is Side.SIGNAL
    assert BUCKETS == 10_000
