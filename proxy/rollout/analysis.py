"""The autopilot's verdict on one interval of figures (SPEC 13), as a pure function.

An analysis **passes** when the promotion criteria hold and signal is within
`compare_legacy` of legacy; it **fails** when a guard trigger is breached, a proxy's guard
is tripped, or signal is worse than legacy by more than twice the margins; with fewer than
`autopilot.min_requests` signal attempts it is **inconclusive** (a quiet hour is not a
failure); when the figures could not be read it is an **error**; otherwise it **holds**.

"Twice the margins": the error-rate margin is `max_error_rate_delta` (fails beyond 2x the
delta); the p95 margin is how much slower `max_p95_ratio` allows (1.5: 50 % slower), so it
fails beyond twice that (100 % slower: a ratio of 2.0).

Two p95s at most `P95_RESOLUTION_MS` (10 ms) apart are never a regression, whatever their
ratio: at a few milliseconds a ratio measures the histogram's buckets, not the APIs.

Legacy is compared only when it served at least a tenth of `min_requests` in the interval
(and has a p95 for the latency part): a handful of legacy requests must not decide, and at
100 % there is no legacy traffic at all. A skipped comparison neither passes nor blocks.

Every figure is recorded beside its threshold, so "why did it hold?" has an answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypedDict

from proxy.config.values import AutopilotConfig, GuardConfig, PromotionConfig


class Outcome(StrEnum):
    PASS = "pass"  # noqa: S105 (not a password)
    HOLD = "hold"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class SideSample:
    """One side's figures over the interval (counter and histogram deltas)."""

    attempts: int  # signal: requests it served plus those that fell back; legacy: served
    errors: int  # failed attempts (connect, timeout, reset, tls, 5xx)
    p50_ms: float | None = None  # None: no latency observation in the interval
    p95_ms: float | None = None
    p99_ms: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.attempts if self.attempts else 0.0


@dataclass(frozen=True, slots=True)
class Sample:
    """What two reads of the figures, `seconds` apart, say about the interval."""

    signal: SideSample
    legacy: SideSample
    guard_tripped: bool  # any proxy's guard, at the second read
    seconds: float


class Kind(StrEnum):
    PASS = "pass"  # noqa: S105 (not a password): a criterion the analysis needs to pass
    FAIL = "fail"  # a trigger that fails the analysis when breached


@dataclass(frozen=True, slots=True)
class Check:
    """One figure beside its threshold."""

    name: str  # "signal error rate"
    kind: Kind
    value: float | None  # None: not measurable this interval
    threshold: float
    rule: str  # how value must compare with threshold to be fine: "<" or "<="
    ok: bool | None  # None: skipped (see `note`)
    note: str = ""

    def describe(self) -> str:
        """`signal error rate 0.40 % (needs < 1.00 %): ok`."""
        unit = _unit(self.name)
        value = "n/a" if self.value is None else unit(self.value)
        verdict = {True: "ok", False: "breached" if self.kind is Kind.FAIL else "not met"}
        text = f"{self.name} {value} (needs {self.rule} {unit(self.threshold)})"
        if self.ok is None:
            return f"{text}: skipped, {self.note}"
        return f"{text}: {verdict[self.ok]}"


def _unit(name: str) -> Callable[[float], str]:
    if "ratio" in name:
        return lambda v: f"{v:.2f}x"
    if "rate" in name:
        return lambda v: f"{v * 100:.2f} %"
    if "ms" in name or "p95" in name:
        return lambda v: f"{v:.0f} ms"
    return lambda v: f"{v:g}"


class CheckDocument(TypedDict):
    name: str
    kind: str
    value: float | None
    threshold: float
    rule: str
    ok: bool | None
    note: str


class SideDocument(TypedDict):
    attempts: int
    errors: int
    error_rate: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class AnalysisDocument(TypedDict):
    """An analysis as the state file, the history and the events webhook carry it."""

    outcome: str
    reason: str
    signal: SideDocument | None
    legacy: SideDocument | None
    guard_tripped: bool | None
    seconds: float | None
    checks: list[CheckDocument]


@dataclass(frozen=True, slots=True)
class Analysis:
    outcome: Outcome
    reason: str  # one sentence: the figure that decided, or why there was none
    checks: tuple[Check, ...] = ()
    sample: Sample | None = None

    def as_document(self) -> AnalysisDocument:
        s = self.sample
        return {
            "outcome": self.outcome.value,
            "reason": self.reason,
            "signal": None if s is None else _side_document(s.signal),
            "legacy": None if s is None else _side_document(s.legacy),
            "guard_tripped": None if s is None else s.guard_tripped,
            "seconds": None if s is None else round(s.seconds, 3),
            "checks": [
                {
                    "name": c.name,
                    "kind": c.kind.value,
                    "value": None if c.value is None else round(c.value, 6),
                    "threshold": c.threshold,
                    "rule": c.rule,
                    "ok": c.ok,
                    "note": c.note,
                }
                for c in self.checks
            ],
        }


def _side_document(side: SideSample) -> SideDocument:
    return {
        "attempts": side.attempts,
        "errors": side.errors,
        "error_rate": round(side.error_rate, 6),
        # NaN (an empty histogram) is not JSON: the state file and webhooks carry null.
        "p50_ms": _finite(side.p50_ms),
        "p95_ms": _finite(side.p95_ms),
        "p99_ms": _finite(side.p99_ms),
    }


def unreadable(reason: str) -> Analysis:
    """The figures could not be read (admin listener or Prometheus down, empty query)."""
    return Analysis(Outcome.ERROR, f"figures unreadable: {reason}")


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _within(value: float, limit: float) -> bool:
    """`value <= limit`, where both came out of arithmetic: 7/800 - 3/800 is exactly the
    0.005 margin but 0.005000000000000001 in floating point, and 1 + 2 * (1.15 - 1) is
    1.2999999999999998; a figure exactly at a margin must not be judged beyond it."""
    return value <= limit or math.isclose(value, limit, rel_tol=1e-9, abs_tol=1e-12)


def analyse(
    sample: Sample,
    autopilot: AutopilotConfig,
    promotion: PromotionConfig,
    guard: GuardConfig,
) -> Analysis:
    """The verdict on one interval; see the module docstring for the rules."""
    signal, legacy = sample.signal, sample.legacy
    p95 = _finite(signal.p95_ms)
    rate = signal.error_rate
    if sample.guard_tripped:
        return Analysis(Outcome.FAIL, "a proxy's guard is tripped", (), sample)
    if signal.attempts < autopilot.min_requests:
        return Analysis(
            Outcome.INCONCLUSIVE,
            f"{signal.attempts} signal attempts in {sample.seconds:.0f} s, fewer than "
            f"autopilot.min_requests {autopilot.min_requests}: not enough to judge",
            (),
            sample,
        )

    checks = [
        Check(
            "signal error rate",
            Kind.FAIL,
            rate,
            guard.max_error_rate,
            "<=",
            rate <= guard.max_error_rate,
        ),
        _p95_check("signal p95", Kind.FAIL, p95, guard.max_p95_ms, "<="),
        Check(
            "signal error rate",
            Kind.PASS,
            rate,
            promotion.max_error_rate,
            "<",
            rate < promotion.max_error_rate,
        ),
        _p95_check("signal p95", Kind.PASS, p95, promotion.max_p95_ms, "<"),
    ]
    checks += _compare(signal, legacy, p95, autopilot)

    failed = [c for c in checks if c.kind is Kind.FAIL and c.ok is False]
    if failed:
        return Analysis(
            Outcome.FAIL, "; ".join(c.describe() for c in failed), tuple(checks), sample
        )
    unmet = [c for c in checks if c.kind is Kind.PASS and c.ok is False]
    if unmet:
        return Analysis(Outcome.HOLD, "; ".join(c.describe() for c in unmet), tuple(checks), sample)
    return Analysis(
        Outcome.PASS, f"every criterion holds ({_summary(sample)})", tuple(checks), sample
    )


def _summary(sample: Sample) -> str:
    """`signal 96 attempts, 0.00 % errors, p95 5 ms; legacy p95 5 ms`."""
    s, legacy = sample.signal, sample.legacy

    def ms(value: float | None) -> str:
        value = _finite(value)
        return "n/a" if value is None else f"{value:.0f} ms"

    return (
        f"signal {s.attempts} attempts, {s.error_rate * 100:.2f} % errors, p95 {ms(s.p95_ms)}; "
        f"legacy {legacy.attempts} attempts, {legacy.error_rate * 100:.2f} % errors, "
        f"p95 {ms(legacy.p95_ms)}"
    )


def _p95_check(name: str, kind: Kind, p95: float | None, limit: float, rule: str) -> Check:
    if p95 is None:
        # No latency figure with enough attempts: nothing was served (every attempt
        # failed before its headers). It cannot pass; the error rate decides a failure.
        return Check(
            name,
            kind,
            None,
            limit,
            rule,
            None if kind is Kind.FAIL else False,
            "no latency observed",
        )
    ok = p95 <= limit if rule == "<=" else p95 < limit
    return Check(name, kind, p95, limit, rule, ok)


# Latency buckets of 5, 10 and 25 ms (SPEC 9's histogram): between two p95s of a few ms, a
# ratio measures where the interpolation lands inside one bucket, not the APIs (4.8 ms
# against 9.5 ms reads as "twice as slow"). A difference this small is never a regression.
P95_RESOLUTION_MS = 10.0


def _compare(
    signal: SideSample, legacy: SideSample, p95: float | None, autopilot: AutopilotConfig
) -> list[Check]:
    margins = autopilot.compare_legacy
    if margins is None:
        return []
    needed = max(1, math.ceil(autopilot.min_requests / 10))
    too_few = legacy.attempts < needed
    skip = f"legacy served {legacy.attempts} requests (needs {needed} to compare)"
    delta = signal.error_rate - legacy.error_rate
    d = margins.max_error_rate_delta
    checks = [
        Check(
            "error rate over legacy's",
            Kind.PASS,
            None if too_few else delta,
            d,
            "<=",
            None if too_few else _within(delta, d),
            skip if too_few else "",
        ),
        Check(
            "error rate over legacy's",
            Kind.FAIL,
            None if too_few else delta,
            2 * d,
            "<=",
            None if too_few else _within(delta, 2 * d),
            skip if too_few else "",
        ),
    ]
    legacy_p95 = _finite(legacy.p95_ms)
    r = margins.max_p95_ratio
    fail_ratio = 1 + 2 * (r - 1)
    if too_few or legacy_p95 is None or legacy_p95 <= 0 or p95 is None:
        note = skip if too_few else "no p95 on both sides"
        checks += [
            Check("p95 ratio to legacy's", Kind.PASS, None, r, "<=", None, note),
            Check("p95 ratio to legacy's", Kind.FAIL, None, fail_ratio, "<=", None, note),
        ]
    elif p95 - legacy_p95 <= P95_RESOLUTION_MS:
        ratio = p95 / legacy_p95
        note = f"within {P95_RESOLUTION_MS:g} ms of legacy's: finer than the histogram resolves"
        checks += [
            Check("p95 ratio to legacy's", Kind.PASS, ratio, r, "<=", True, note),
            Check("p95 ratio to legacy's", Kind.FAIL, ratio, fail_ratio, "<=", True, note),
        ]
    else:
        ratio = p95 / legacy_p95
        checks += [
            Check("p95 ratio to legacy's", Kind.PASS, ratio, r, "<=", _within(ratio, r)),
            Check(
                "p95 ratio to legacy's",
                Kind.FAIL,
                ratio,
                fail_ratio,
                "<=",
                _within(ratio, fail_ratio),
            ),
        ]
    return checks
