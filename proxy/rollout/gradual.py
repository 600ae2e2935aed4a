"""The steps of a gradual rollback (SPEC 14): from the current percentage down to a target,
a fixed step at a time, so legacy takes the returning users at a pace. Pure.

Percentages have at most two decimals (SPEC 2), so the arithmetic is done in hundredths of
a percent: 0.1 subtracted thirty times must still land on a valid value.
"""

from __future__ import annotations


def gradual_steps(current: float, target: float, step: float) -> list[float]:
    """Every percentage written on the way down, the target last; empty when
    `target >= current` (nothing to lower). A last step shorter than `step` lands exactly
    on the target. `ValueError` for a step that is not above 0 or a target below 0."""
    if not step > 0:
        raise ValueError(f"the step must be more than 0, not {step:g}")
    if target < 0:
        raise ValueError(f"the target must be 0 or more, not {target:g}")
    here, there, by = _hundredths(current), _hundredths(target), max(_hundredths(step), 1)
    steps = [value / 100 for value in range(here - by, there, -by)]
    return [*steps, there / 100] if there < here else []


def step_number(steps: list[float], percentage: float) -> int:
    """Which step (from 1) wrote `percentage`; 0 when none did (the start)."""
    return steps.index(percentage) + 1 if percentage in steps else 0


def _hundredths(value: float) -> int:
    return round(value * 100)
