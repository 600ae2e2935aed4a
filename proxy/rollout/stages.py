"""The rollout plan as pure decisions: stages, promotion criteria, rollback triggers.

`rollout promote`, `rollback`, `status` and `report` all judge the same figures the same
way through these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from proxy.config.values import GuardConfig, PromotionConfig


def stage_index(stages: tuple[float, ...], percentage: float) -> int | None:
    """The stage whose percentage this is, or None when between stages."""
    return stages.index(percentage) if percentage in stages else None


def next_stage(stages: tuple[float, ...], percentage: float) -> float | None:
    """The first stage above the current percentage."""
    return next((s for s in stages if s > percentage), None)


def previous_stage(stages: tuple[float, ...], percentage: float) -> float | None:
    """The last stage below the current percentage."""
    below = [s for s in stages if s < percentage]
    return below[-1] if below else None


def describe_stage(stages: tuple[float, ...], percentage: float) -> str:
    index = stage_index(stages, percentage)
    if index is None:
        return f"between stages (plan: {', '.join(f'{s:g}' for s in stages)})"
    return f"stage {index} of {len(stages) - 1}"


@dataclass(frozen=True, slots=True)
class Figures:
    """One upstream's window: what the criteria are judged on."""

    requests: int
    error_rate: float
    p95_ms: float | None


class Status(StrEnum):
    PASS = "pass"  # noqa: S105 (not a password)
    FAIL = "fail"
    NOT_ENOUGH_DATA = "not enough data"


@dataclass(frozen=True, slots=True)
class Criterion:
    name: str
    target: str
    actual: str
    status: Status


class Recommendation(StrEnum):
    PROMOTE = "promote"
    HOLD = "hold"
    ROLL_BACK = "roll back"


@dataclass(frozen=True, slots=True)
class Verdict:
    promotion: list[Criterion]
    rollback: list[Criterion]
    recommendation: Recommendation
    missing_requests: int

    @property
    def promotable(self) -> bool:
        return all(c.status is Status.PASS for c in self.promotion)


def _pct(value: float) -> str:
    return f"{value * 100:.2f} %"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def judge(signal: Figures, promotion: PromotionConfig, guard: GuardConfig) -> Verdict:
    """Promotion criteria and rollback triggers on signal's figures, and what to do."""
    enough = signal.requests >= promotion.min_requests
    missing = max(promotion.min_requests - signal.requests, 0)

    def gate(ok: bool) -> Status:
        if not enough:
            return Status.NOT_ENOUGH_DATA
        return Status.PASS if ok else Status.FAIL

    p95_ok = signal.p95_ms is not None and signal.p95_ms < promotion.max_p95_ms
    promo = [
        Criterion(
            "signal requests in window",
            f">= {promotion.min_requests}",
            str(signal.requests),
            Status.PASS if enough else Status.NOT_ENOUGH_DATA,
        ),
        Criterion(
            "error rate",
            f"< {_pct(promotion.max_error_rate)}",
            _pct(signal.error_rate),
            gate(signal.error_rate < promotion.max_error_rate),
        ),
        Criterion(
            "p95 latency", f"< {promotion.max_p95_ms:g} ms", _ms(signal.p95_ms), gate(p95_ok)
        ),
    ]

    judged = signal.requests >= guard.min_requests
    err_breach = judged and signal.error_rate > guard.max_error_rate
    p95_breach = judged and signal.p95_ms is not None and signal.p95_ms > guard.max_p95_ms

    def trigger(breached: bool) -> Status:
        if not judged:
            return Status.NOT_ENOUGH_DATA
        return Status.FAIL if breached else Status.PASS

    rollback = [
        Criterion(
            "error rate (rollback trigger)",
            f"<= {_pct(guard.max_error_rate)}",
            _pct(signal.error_rate),
            trigger(err_breach),
        ),
        Criterion(
            "p95 latency (rollback trigger)",
            f"<= {guard.max_p95_ms:g} ms",
            _ms(signal.p95_ms),
            trigger(p95_breach),
        ),
    ]
    if err_breach or p95_breach:
        recommendation = Recommendation.ROLL_BACK
    elif all(c.status is Status.PASS for c in promo):
        recommendation = Recommendation.PROMOTE
    else:
        recommendation = Recommendation.HOLD
    return Verdict(promo, rollback, recommendation, missing)


def promotion_blockers(
    verdict: Verdict,
    *,
    configured: float,
    served: float,
    emergency: bool,
    guard_trip: str | None,
) -> list[str]:
    """Why `rollout promote` must not move on, one sentence each; empty: it may. Pure.

    `served` is the percentage the running proxy applies: figures gathered at another
    percentage are no evidence for this stage. `guard_trip` is the trip reason, None while
    the guard is armed.
    """
    blocked = []
    if served != configured:
        blocked.append(
            f"the proxy serves {served:g} %, not the file's {configured:g} %: its "
            "figures are no evidence for this stage yet (wait for the reload)"
        )
    if guard_trip is not None:
        blocked.append(f"the guard is tripped: {guard_trip}")
    if emergency:
        blocked.append("emergency is on")
    blocked.extend(
        f"{c.name}: {c.actual}, needs {c.target}"
        for c in verdict.promotion
        if c.status is not Status.PASS
    )
    if verdict.missing_requests:
        blocked.append(
            f"{verdict.missing_requests} more signal requests needed in the window "
            "(low traffic is not a pass)"
        )
    return blocked
