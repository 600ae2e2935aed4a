"""The rollout plan as pure decisions (proxy/rollout/stages.py): stages, promotion and rollback."""

from __future__ import annotations

import pytest

from proxy.config.values import GuardConfig, PromotionConfig
from proxy.rollout.stages import (
    Figures,
    Recommendation,
    Status,
    Verdict,
    describe_stage,
    judge,
    next_stage,
    previous_stage,
    promotion_blockers,
    stage_index,
)

STAGES = (0.0, 10.0, 30.0, 50.0, 80.0, 100.0)


@pytest.mark.parametrize(
    ("percentage", "index"),
    [
        (0, 0),
        (10, 1),
        (30, 2),
        (50, 3),
        (80, 4),
        (100, 5),
        (25, None),
        (10.5, None),
        (0.01, None),
        (99.99, None),
    ],
)
def test_stage_index(percentage: float, index: int | None) -> None:
    assert stage_index(STAGES, percentage) == index


@pytest.mark.parametrize(
    ("percentage", "nxt", "prev"),
    [
        (0, 10, None),  # the first stage: nothing below it
        (10, 30, 0),
        (30, 50, 10),
        (50, 80, 30),
        (80, 100, 50),
        (100, None, 80),  # the last stage: nothing above it
        # Between stages: promote goes up to the next one, rollback down to the one below.
        (0.01, 10, 0),
        (5, 10, 0),
        (25, 30, 10),
        (10.5, 30, 10),
        (99.99, 100, 80),
    ],
)
def test_next_and_previous_stage(percentage: float, nxt: float | None, prev: float | None) -> None:
    assert next_stage(STAGES, percentage) == nxt
    assert previous_stage(STAGES, percentage) == prev


@pytest.mark.parametrize(
    ("stages", "percentage", "nxt", "prev"),
    [
        ((5.0, 50.0), 0, 5, None),  # below the first stage of a plan that does not start at 0
        ((5.0, 50.0), 75, None, 50),  # above the last stage of a plan that does not reach 100
        ((100.0,), 100, None, None),
        ((0.0, 100.0), 0, 100, None),
    ],
)
def test_next_and_previous_stage_with_other_plans(
    stages: tuple[float, ...], percentage: float, nxt: float | None, prev: float | None
) -> None:
    assert next_stage(stages, percentage) == nxt
    assert previous_stage(stages, percentage) == prev


@pytest.mark.parametrize(
    ("percentage", "text"),
    [
        (0, "stage 0 of 5"),
        (10, "stage 1 of 5"),
        (100, "stage 5 of 5"),
        (25, "between stages (plan: 0, 10, 30, 50, 80, 100)"),
    ],
)
def test_describe_stage(percentage: float, text: str) -> None:
    assert describe_stage(STAGES, percentage) == text


PROMOTION = PromotionConfig(min_requests=100, max_error_rate=0.01, max_p95_ms=200)
GUARD = GuardConfig(min_requests=50, max_error_rate=0.05, max_p95_ms=500)

PASS, FAIL, NO_DATA = Status.PASS, Status.FAIL, Status.NOT_ENOUGH_DATA
PROMOTE, HOLD, ROLL_BACK = Recommendation.PROMOTE, Recommendation.HOLD, Recommendation.ROLL_BACK


@pytest.mark.parametrize(
    ("figures", "promotion", "rollback", "recommendation", "missing"),
    [
        pytest.param(
            Figures(0, 0.0, None), [NO_DATA] * 3, [NO_DATA] * 2, HOLD, 100, id="no traffic"
        ),
        pytest.param(
            Figures(99, 0.0, 20.0), [NO_DATA] * 3, [PASS] * 2, HOLD, 1, id="one request short"
        ),
        pytest.param(
            Figures(60, 0.0, 20.0),
            [NO_DATA] * 3,
            [PASS, PASS],  # enough for the guard (50), not for promotion (100)
            HOLD,
            40,
            id="judged by the guard, not yet for promotion",
        ),
        pytest.param(Figures(100, 0.0, 20.0), [PASS] * 3, [PASS] * 2, PROMOTE, 0, id="healthy"),
        pytest.param(
            Figures(5000, 0.0099, 199.9), [PASS] * 3, [PASS] * 2, PROMOTE, 0, id="just inside"
        ),
        pytest.param(
            Figures(100, 0.01, 20.0),
            [PASS, FAIL, PASS],
            [PASS, PASS],
            HOLD,
            0,
            id="error rate exactly at the promotion limit is not a pass",
        ),
        pytest.param(
            Figures(100, 0.0, 200.0),
            [PASS, PASS, FAIL],
            [PASS, PASS],
            HOLD,
            0,
            id="p95 exactly at the promotion limit is not a pass",
        ),
        pytest.param(
            Figures(100, 0.0, None),
            [PASS, PASS, FAIL],
            [PASS, PASS],
            HOLD,
            0,
            id="no latency figure is not a pass",
        ),
        pytest.param(
            Figures(100, 0.03, 20.0),
            [PASS, FAIL, PASS],
            [PASS, PASS],
            HOLD,
            0,
            id="too many errors to promote, too few to roll back",
        ),
        pytest.param(
            Figures(100, 0.05, 500.0),
            [PASS, FAIL, FAIL],
            [PASS, PASS],
            HOLD,
            0,
            id="exactly at the guard limits is not a rollback",
        ),
        pytest.param(
            Figures(100, 0.06, 20.0),
            [PASS, FAIL, PASS],
            [FAIL, PASS],
            ROLL_BACK,
            0,
            id="error rate above the guard",
        ),
        pytest.param(
            Figures(100, 0.0, 501.0),
            [PASS, PASS, FAIL],
            [PASS, FAIL],
            ROLL_BACK,
            0,
            id="p95 above the guard",
        ),
        pytest.param(
            Figures(50, 0.5, 900.0),
            [NO_DATA] * 3,
            [FAIL, FAIL],
            ROLL_BACK,
            50,
            id="guard minimum reached: roll back before promotion has data",
        ),
        pytest.param(
            Figures(49, 0.5, 900.0),
            [NO_DATA] * 3,
            [NO_DATA] * 2,
            HOLD,
            51,
            id="below the guard minimum nothing is judged",
        ),
    ],
)
def test_judge(
    figures: Figures,
    promotion: list[Status],
    rollback: list[Status],
    recommendation: Recommendation,
    missing: int,
) -> None:
    verdict = judge(figures, PROMOTION, GUARD)
    assert [c.status for c in verdict.promotion] == promotion
    assert [c.status for c in verdict.rollback] == rollback
    assert verdict.recommendation is recommendation
    assert verdict.missing_requests == missing
    assert verdict.promotable is (promotion == [PASS] * 3)


def test_judge_names_targets_and_actuals() -> None:
    verdict = judge(Figures(120, 0.004, 87.4), PROMOTION, GUARD)
    rows = [(c.name, c.target, c.actual) for c in verdict.promotion + verdict.rollback]
    assert rows == [
        ("signal requests in window", ">= 100", "120"),
        ("error rate", "< 1.00 %", "0.40 %"),
        ("p95 latency", "< 200 ms", "87 ms"),
        ("error rate (rollback trigger)", "<= 5.00 %", "0.40 %"),
        ("p95 latency (rollback trigger)", "<= 500 ms", "87 ms"),
    ]


def test_judge_without_latency_shows_na() -> None:
    verdict = judge(Figures(0, 0.0, None), PROMOTION, GUARD)
    assert verdict.promotion[2].actual == "n/a"
    assert verdict.rollback[1].actual == "n/a"


_PASSING = judge(Figures(500, 0.001, 50.0), PromotionConfig(), GuardConfig())
_FAILING = judge(Figures(500, 0.02, 250.0), PromotionConfig(), GuardConfig())
_THIN = judge(Figures(40, 0.0, 50.0), PromotionConfig(), GuardConfig())


@pytest.mark.parametrize(
    ("verdict", "served", "emergency", "trip", "expected"),
    [
        (_PASSING, 10.0, False, None, []),
        (_PASSING, 0.0, False, None, ["the proxy serves 0 %, not the file's 10 %"]),
        (_PASSING, 10.0, False, "error rate 9.00 % > 5.00 %", ["the guard is tripped: error"]),
        (_PASSING, 10.0, True, None, ["emergency is on"]),
        (_FAILING, 10.0, False, None, ["error rate: 2.00 %, needs < 1.00 %", "p95 latency:"]),
        (
            _THIN,
            10.0,
            False,
            None,
            ["signal requests in window: 40", "error rate", "p95", "60 more signal requests"],
        ),
        (
            _FAILING,
            30.0,
            True,
            "p95",
            ["the proxy serves 30 %", "the guard is tripped: p95", "emergency", "error", "p95"],
        ),
    ],
)
def test_promotion_blockers(
    verdict: Verdict, served: float, emergency: bool, trip: str | None, expected: list[str]
) -> None:
    blocked = promotion_blockers(
        verdict, configured=10.0, served=served, emergency=emergency, guard_trip=trip
    )
    assert len(blocked) == len(expected), blocked
    for sentence, start in zip(blocked, expected, strict=True):
        assert sentence.startswith(start), (sentence, start)
