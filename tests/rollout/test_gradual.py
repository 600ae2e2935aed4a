"""proxy.rollout.gradual: the steps of a gradual rollback (SPEC 14)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.rollout.gradual import gradual_steps, step_number

# (case, current, target, step, the steps)
STEPS: list[tuple[str, float, float, float, list[float]]] = [
    ("even steps", 50, 30, 5, [45, 40, 35, 30]),
    ("the last step is shorter and lands on the target", 50, 30, 15, [35, 30]),
    ("a step wider than the span: one step", 50, 30, 40, [30]),
    ("a step equal to the span", 50, 30, 20, [30]),
    ("down to zero", 10, 0, 5, [5, 0]),
    ("two decimals stay exact", 1, 0.7, 0.1, [0.9, 0.8, 0.7]),
    ("a target with decimals", 10, 2.5, 5, [5, 2.5]),
    ("a start with decimals", 12.34, 10, 1, [11.34, 10.34, 10]),
    ("the smallest step", 0.03, 0, 0.01, [0.02, 0.01, 0]),
    ("target equal to current: nothing", 30, 30, 5, []),
    ("target above current: nothing", 30, 50, 5, []),
]


@pytest.mark.parametrize(
    ("current", "target", "step", "steps"),
    [row[1:] for row in STEPS],
    ids=[row[0] for row in STEPS],
)
def test_gradual_steps(current: float, target: float, step: float, steps: list[float]) -> None:
    assert gradual_steps(current, target, step) == steps


@pytest.mark.parametrize(
    ("target", "step", "message"),
    [
        (30, 0, "the step must be more than 0, not 0"),
        (30, -5, "the step must be more than 0, not -5"),
        (-1, 5, "the target must be 0 or more, not -1"),
    ],
)
def test_gradual_steps_refuses(target: float, step: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gradual_steps(50, target, step)


def test_step_number() -> None:
    steps = gradual_steps(50, 30, 5)
    assert [step_number(steps, p) for p in (50, 45, 40, 35, 30)] == [0, 1, 2, 3, 4]


hundredths = st.integers(0, 10_000).map(lambda n: n / 100)


@given(current=hundredths, target=hundredths, step=st.integers(1, 10_000).map(lambda n: n / 100))
def test_every_step_is_a_valid_percentage_going_down_by_at_most_step(
    current: float, target: float, step: float
) -> None:
    steps = gradual_steps(current, target, step)
    if target >= current:
        assert steps == []
        return
    assert steps[-1] == target
    previous = current
    for value in steps:
        assert 0 <= value < previous
        assert value == round(value, 2)  # a valid percentage (SPEC 2)
        assert round((previous - value) * 100) <= round(step * 100)
        previous = value
