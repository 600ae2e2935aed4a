"""proxy.rollout.analysis: the autopilot's verdict on one interval, one row per case (SPEC 13)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from proxy.config.values import AutopilotConfig, CompareLegacy, GuardConfig, PromotionConfig
from proxy.rollout.analysis import (
    Analysis,
    Check,
    Kind,
    Outcome,
    Sample,
    SideSample,
    analyse,
    unreadable,
)

# The plan: advance while error rate < 1 % and p95 < 200 ms, fail beyond 5 % or
# 500 ms; signal within 0.5 points and 1.5x of legacy to pass, beyond 1 point or 2.0x fails.
AUTOPILOT = AutopilotConfig(
    min_requests=100, compare_legacy=CompareLegacy(max_error_rate_delta=0.005, max_p95_ratio=1.5)
)
ALONE = dataclasses.replace(AUTOPILOT, compare_legacy=None)  # the fixed thresholds only
PROMOTION = PromotionConfig(min_requests=500, max_error_rate=0.01, max_p95_ms=200.0)
GUARD = GuardConfig(enabled=False, max_error_rate=0.05, max_p95_ms=500.0)  # judged even if off

NAN = math.nan


def side(attempts: int, errors: int = 0, p95: float | None = 100.0) -> SideSample:
    return SideSample(attempts, errors, None if p95 is None else p95 / 2, p95, p95)


HEALTHY = side(1000)


def sample(
    signal: SideSample = HEALTHY,
    legacy: SideSample = HEALTHY,
    *,
    tripped: bool = False,
) -> Sample:
    return Sample(signal=signal, legacy=legacy, guard_tripped=tripped, seconds=60.0)


# (case, sample, autopilot config, outcome, fragments the reason must contain)
TABLE: list[tuple[str, Sample, AutopilotConfig, Outcome, tuple[str, ...]]] = [
    ("healthy", sample(), AUTOPILOT, Outcome.PASS, ("every criterion holds",)),
    # --- the promotion criteria: "<", so exactly at the limit is not a pass
    ("error rate just under 1 %", sample(side(1000, 9)), ALONE, Outcome.PASS, ()),
    (
        "error rate exactly 1 % holds",
        sample(side(1000, 10)),
        ALONE,
        Outcome.HOLD,
        ("signal error rate 1.00 % (needs < 1.00 %): not met",),
    ),
    ("p95 just under 200 ms", sample(side(1000, p95=199.9)), ALONE, Outcome.PASS, ()),
    (
        "p95 exactly 200 ms holds",
        sample(side(1000, p95=200.0)),
        ALONE,
        Outcome.HOLD,
        ("signal p95 200 ms (needs < 200 ms): not met",),
    ),
    (
        "hold names every unmet criterion",
        sample(side(1000, 20, p95=300.0)),
        ALONE,
        Outcome.HOLD,
        ("signal error rate 2.00 % (needs < 1.00 %)", "signal p95 300 ms (needs < 200 ms)"),
    ),
    # --- the guard triggers: "<=", so exactly at the limit is not a failure
    (
        "error rate exactly 5 % holds, not fails",
        sample(side(1000, 50)),
        ALONE,
        Outcome.HOLD,
        ("signal error rate 5.00 % (needs < 1.00 %): not met",),
    ),
    (
        "error rate just over 5 % fails",
        sample(side(1000, 51)),
        ALONE,
        Outcome.FAIL,
        ("signal error rate 5.10 % (needs <= 5.00 %): breached",),
    ),
    (
        "p95 exactly 500 ms holds, not fails",
        sample(side(1000, p95=500.0)),
        ALONE,
        Outcome.HOLD,
        ("signal p95 500 ms (needs < 200 ms): not met",),
    ),
    (
        "p95 just over 500 ms fails",
        sample(side(1000, p95=501.0)),
        ALONE,
        Outcome.FAIL,
        ("signal p95 501 ms (needs <= 500 ms): breached",),
    ),
    (
        "a failure names only the breached triggers",
        sample(side(1000, 60, p95=900.0)),
        ALONE,
        Outcome.FAIL,
        ("signal error rate 6.00 % (needs <= 5.00 %): breached", "signal p95 900 ms"),
    ),
    # --- a tripped guard fails whatever the sample
    (
        "guard tripped, healthy figures",
        sample(tripped=True),
        AUTOPILOT,
        Outcome.FAIL,
        ("a proxy's guard is tripped",),
    ),
    (
        "guard tripped with a tiny sample",
        sample(side(3, 3, p95=None), tripped=True),
        AUTOPILOT,
        Outcome.FAIL,
        ("a proxy's guard is tripped",),
    ),
    (
        "guard tripped with no signal traffic",
        sample(side(0, p95=None), side(0, p95=None), tripped=True),
        AUTOPILOT,
        Outcome.FAIL,
        ("a proxy's guard is tripped",),
    ),
    # --- the sample: fewer than autopilot.min_requests is inconclusive, never a failure
    (
        "no signal traffic",
        sample(side(0, p95=None)),
        AUTOPILOT,
        Outcome.INCONCLUSIVE,
        ("0 signal attempts in 60 s, fewer than autopilot.min_requests 100",),
    ),
    (
        "one attempt short",
        sample(side(99)),
        AUTOPILOT,
        Outcome.INCONCLUSIVE,
        ("99 signal attempts",),
    ),
    (
        "one attempt short, every one failed",
        sample(side(99, 99, p95=None)),
        AUTOPILOT,
        Outcome.INCONCLUSIVE,
        ("not enough to judge",),
    ),
    ("exactly min_requests is judged", sample(side(100)), AUTOPILOT, Outcome.PASS, ()),
    (
        "exactly min_requests, failing, is judged",
        sample(side(100, 6)),
        ALONE,
        Outcome.FAIL,
        ("signal error rate 6.00 % (needs <= 5.00 %): breached",),
    ),
    # --- no latency figure on signal's side (NaN from an empty histogram, or None)
    (
        "signal p95 NaN holds",
        sample(side(1000, p95=NAN)),
        AUTOPILOT,
        Outcome.HOLD,
        ("signal p95 n/a (needs < 200 ms): not met",),
    ),
    (
        "signal p95 None holds",
        sample(side(1000, p95=None)),
        AUTOPILOT,
        Outcome.HOLD,
        ("signal p95 n/a (needs < 200 ms): not met",),
    ),
    (
        "signal p95 NaN, every attempt failed: the error rate fails it",
        sample(side(1000, 1000, p95=NAN)),
        ALONE,
        Outcome.FAIL,
        ("signal error rate 100.00 % (needs <= 5.00 %): breached",),
    ),
    # --- compare_legacy: the error rate over legacy's
    ("delta under the margin", sample(side(1000, 9), side(1000, 4)), AUTOPILOT, Outcome.PASS, ()),
    ("delta exactly the margin", sample(side(1000, 7), side(1000, 2)), AUTOPILOT, Outcome.PASS, ()),
    (
        # 7/800 - 3/800 is 0.005000000000000001 in floating point: still the margin
        "delta exactly the margin, rounding above it",
        sample(side(800, 7), side(800, 3)),
        AUTOPILOT,
        Outcome.PASS,
        (),
    ),
    (
        "delta between 1x and 2x the margin holds",
        sample(side(1000, 9), side(1000, 0)),
        AUTOPILOT,
        Outcome.HOLD,
        ("error rate over legacy's 0.90 % (needs <= 0.50 %): not met",),
    ),
    (
        "delta exactly 2x the margin holds, not fails",
        sample(side(1000, 20), side(1000, 10)),
        AUTOPILOT,
        Outcome.HOLD,
        ("error rate over legacy's 1.00 % (needs <= 0.50 %): not met",),
    ),
    (
        # 5/200 - 3/200 is 0.010000000000000002 in floating point: still 2x, not beyond
        "delta exactly 2x the margin, rounding above it",
        sample(side(200, 5), side(200, 3)),
        AUTOPILOT,
        Outcome.HOLD,
        ("error rate over legacy's 1.00 % (needs <= 0.50 %): not met",),
    ),
    (
        "delta beyond 2x the margin fails inside the fixed thresholds",
        sample(side(1000, 16), side(1000, 5)),
        AUTOPILOT,
        Outcome.FAIL,
        ("error rate over legacy's 1.10 % (needs <= 1.00 %): breached",),
    ),
    (
        "signal better than legacy",
        sample(side(1000, 0), side(1000, 40)),
        AUTOPILOT,
        Outcome.PASS,
        (),
    ),
    # --- compare_legacy: the p95 ratio to legacy's (1.5: fails beyond 2.0)
    ("ratio under 1.5", sample(side(1000, p95=140.0)), AUTOPILOT, Outcome.PASS, ()),
    (
        "ratio exactly 1.5",
        sample(side(1000, p95=150.0), side(1000, p95=100.0)),
        AUTOPILOT,
        Outcome.PASS,
        (),
    ),
    (
        "ratio between 1.5 and 2.0 holds",
        sample(side(1000, p95=180.0), side(1000, p95=100.0)),
        AUTOPILOT,
        Outcome.HOLD,
        ("p95 ratio to legacy's 1.80x (needs <= 1.50x): not met",),
    ),
    (
        "ratio exactly 2.0 holds, not fails",
        sample(side(1000, p95=190.0), side(1000, p95=95.0)),
        AUTOPILOT,
        Outcome.HOLD,
        ("p95 ratio to legacy's 2.00x (needs <= 1.50x): not met",),
    ),
    (
        "ratio beyond 2.0 fails inside the fixed thresholds",
        sample(side(1000, p95=190.0), side(1000, p95=90.0)),
        AUTOPILOT,
        Outcome.FAIL,
        ("p95 ratio to legacy's 2.11x (needs <= 2.00x): breached",),
    ),
    (
        # 1 + 2 * (1.15 - 1) is 1.2999999999999998 in floating point: 1.3 is still the limit
        "ratio exactly the failing limit of a 1.15 margin",
        sample(side(1000, p95=390.0), side(1000, p95=300.0)),
        dataclasses.replace(AUTOPILOT, compare_legacy=CompareLegacy(0.005, 1.15)),
        Outcome.HOLD,
        ("p95 ratio to legacy's 1.30x (needs <= 1.15x): not met",),
    ),
    # --- p95s a few ms apart: finer than the 5/10/25 ms buckets resolve, never a regression
    (
        "2x legacy's p95 but 4.75 ms apart: ok",
        sample(side(1000, p95=9.5), side(1000, p95=4.75)),
        AUTOPILOT,
        Outcome.PASS,
        (),
    ),
    (
        "exactly 10 ms apart at 3x: ok",
        sample(side(1000, p95=15.0), side(1000, p95=5.0)),
        AUTOPILOT,
        Outcome.PASS,
        (),
    ),
    (
        "just over 10 ms apart at 3x: judged, fails",
        sample(side(1000, p95=15.5), side(1000, p95=5.0)),
        AUTOPILOT,
        Outcome.FAIL,
        ("p95 ratio to legacy's 3.10x (needs <= 2.00x): breached",),
    ),
    # --- compare_legacy skipped: off, no legacy traffic, too little, no legacy p95
    (
        "compare_legacy null: much worse than legacy still passes",
        sample(side(1000, 9, p95=190.0), side(1000, 0, p95=10.0)),
        ALONE,
        Outcome.PASS,
        (),
    ),
    (
        "zero legacy traffic (100 %): skipped, can pass",
        sample(legacy=side(0, p95=None)),
        AUTOPILOT,
        Outcome.PASS,
        (),
    ),
    (
        "legacy below a tenth of min_requests: skipped",
        sample(side(1000, 9, p95=190.0), side(9, 0, p95=10.0)),
        AUTOPILOT,
        Outcome.PASS,
        (),
    ),
    (
        "legacy exactly a tenth of min_requests: compared",
        sample(side(1000, 9, p95=190.0), side(10, 0, p95=10.0)),
        AUTOPILOT,
        Outcome.FAIL,
        ("p95 ratio to legacy's 19.00x (needs <= 2.00x): breached",),
    ),
    (
        "legacy p95 NaN: the ratio skipped, the delta still judged",
        sample(side(1000, 9, p95=190.0), side(1000, 0, p95=NAN)),
        AUTOPILOT,
        Outcome.HOLD,
        ("error rate over legacy's 0.90 % (needs <= 0.50 %): not met",),
    ),
    (
        "legacy p95 None: the ratio skipped",
        sample(side(1000, p95=190.0), side(1000, p95=None)),
        AUTOPILOT,
        Outcome.PASS,
        (),
    ),
    (
        "legacy p95 0: the ratio skipped",
        sample(legacy=side(1000, p95=0.0)),
        AUTOPILOT,
        Outcome.PASS,
        (),
    ),
    (
        "NaN p95 on both sides: the ratio skipped, signal's p95 holds",
        sample(side(1000, p95=NAN), side(1000, p95=NAN)),
        AUTOPILOT,
        Outcome.HOLD,
        ("signal p95 n/a (needs < 200 ms): not met",),
    ),
    (
        "min_requests 5: one legacy request is enough to compare",
        sample(side(5, p95=190.0), side(1, p95=10.0)),
        dataclasses.replace(AUTOPILOT, min_requests=5),
        Outcome.FAIL,
        ("p95 ratio to legacy's 19.00x",),
    ),
]


@pytest.mark.parametrize(
    ("sample_", "autopilot", "outcome", "fragments"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_analyse(
    sample_: Sample, autopilot: AutopilotConfig, outcome: Outcome, fragments: tuple[str, ...]
) -> None:
    analysis = analyse(sample_, autopilot, PROMOTION, GUARD)
    assert analysis.outcome is outcome, analysis.reason
    for fragment in fragments:
        assert fragment in analysis.reason
    assert analysis.sample is sample_


@pytest.mark.parametrize(
    ("sample_", "autopilot"), [row[1:3] for row in TABLE], ids=[row[0] for row in TABLE]
)
def test_the_document_is_json_and_carries_every_check(
    sample_: Sample, autopilot: AutopilotConfig
) -> None:
    analysis = analyse(sample_, autopilot, PROMOTION, GUARD)
    # allow_nan=False: NaN is not JSON, and the state file and webhooks must parse anywhere.
    text = json.dumps(analysis.as_document(), allow_nan=False)
    document = json.loads(text)
    assert document["outcome"] == analysis.outcome.value
    assert document["reason"] == analysis.reason
    assert document["signal"]["attempts"] == sample_.signal.attempts
    assert document["legacy"]["errors"] == sample_.legacy.errors
    assert document["guard_tripped"] is sample_.guard_tripped
    assert [(c["name"], c["kind"], c["ok"]) for c in document["checks"]] == [
        (c.name, c.kind.value, c.ok) for c in analysis.checks
    ]


FIXED = [
    ("signal error rate", "fail"),
    ("signal p95", "fail"),
    ("signal error rate", "pass"),
    ("signal p95", "pass"),
]
VERSUS_LEGACY = [
    ("error rate over legacy's", "pass"),
    ("error rate over legacy's", "fail"),
    ("p95 ratio to legacy's", "pass"),
    ("p95 ratio to legacy's", "fail"),
]

# (case, sample, config, the checks a judged analysis carries, by name and kind)
JUDGED: list[tuple[str, Sample, AutopilotConfig, list[tuple[str, str]]]] = [
    ("pass, compared", sample(), AUTOPILOT, FIXED + VERSUS_LEGACY),
    ("fail, compared", sample(side(1000, 60)), AUTOPILOT, FIXED + VERSUS_LEGACY),
    (
        "hold, legacy skipped",
        sample(side(1000, 20), side(0, p95=None)),
        AUTOPILOT,
        FIXED + VERSUS_LEGACY,
    ),
    ("compare_legacy null", sample(), ALONE, FIXED),
]


@pytest.mark.parametrize(
    ("sample_", "autopilot", "checks"), [row[1:] for row in JUDGED], ids=[row[0] for row in JUDGED]
)
def test_a_judged_analysis_records_every_figure_beside_its_threshold(
    sample_: Sample, autopilot: AutopilotConfig, checks: list[tuple[str, str]]
) -> None:
    analysis = analyse(sample_, autopilot, PROMOTION, GUARD)
    assert [(c.name, c.kind.value) for c in analysis.checks] == checks
    thresholds = {(c.name, c.kind.value): c.threshold for c in analysis.checks}
    assert thresholds[("signal error rate", "fail")] == GUARD.max_error_rate
    assert thresholds[("signal p95", "fail")] == GUARD.max_p95_ms
    assert thresholds[("signal error rate", "pass")] == PROMOTION.max_error_rate
    assert thresholds[("signal p95", "pass")] == PROMOTION.max_p95_ms
    if autopilot.compare_legacy is not None:
        assert thresholds[("error rate over legacy's", "fail")] == 0.01
        assert thresholds[("p95 ratio to legacy's", "fail")] == 2.0


def test_a_skipped_comparison_says_why() -> None:
    analysis = analyse(sample(legacy=side(0, p95=None)), AUTOPILOT, PROMOTION, GUARD)
    skipped = [c for c in analysis.checks if c.ok is None]
    assert [c.name for c in skipped] == [name for name, _ in VERSUS_LEGACY]
    for check in skipped:
        assert check.value is None
        assert check.note == "legacy served 0 requests (needs 10 to compare)"
        assert check.describe().endswith(
            ": skipped, legacy served 0 requests (needs 10 to compare)"
        )


def test_nan_p95_on_legacy_is_a_skip_with_its_note() -> None:
    analysis = analyse(sample(legacy=side(1000, p95=NAN)), AUTOPILOT, PROMOTION, GUARD)
    ratio = [c for c in analysis.checks if c.name == "p95 ratio to legacy's"]
    assert [(c.ok, c.note) for c in ratio] == [(None, "no p95 on both sides")] * 2
    assert (
        json.loads(json.dumps(analysis.as_document(), allow_nan=False))["legacy"]["p95_ms"] is None
    )


@pytest.mark.parametrize(
    ("check", "text"),
    [
        (
            Check("signal error rate", Kind.PASS, 0.004, 0.01, "<", True),
            "signal error rate 0.40 % (needs < 1.00 %): ok",
        ),
        (
            Check("signal error rate", Kind.PASS, 0.01, 0.01, "<", False),
            "signal error rate 1.00 % (needs < 1.00 %): not met",
        ),
        (
            Check("signal error rate", Kind.FAIL, 0.0612, 0.05, "<=", False),
            "signal error rate 6.12 % (needs <= 5.00 %): breached",
        ),
        (
            Check("signal p95", Kind.PASS, 187.4, 200.0, "<", True),
            "signal p95 187 ms (needs < 200 ms): ok",
        ),
        (
            Check("signal p95", Kind.FAIL, None, 500.0, "<=", None, "no latency observed"),
            "signal p95 n/a (needs <= 500 ms): skipped, no latency observed",
        ),
        (
            Check("p95 ratio to legacy's", Kind.FAIL, 2.345, 2.0, "<=", False),
            "p95 ratio to legacy's 2.35x (needs <= 2.00x): breached",
        ),
        (
            Check("error rate over legacy's", Kind.PASS, -0.002, 0.005, "<=", True),
            "error rate over legacy's -0.20 % (needs <= 0.50 %): ok",
        ),
    ],
    ids=["pass ok", "pass not met", "fail breached", "ms", "skipped", "ratio", "negative delta"],
)
def test_describe_names_the_value_and_the_threshold(check: Check, text: str) -> None:
    assert check.describe() == text


def test_unreadable_is_an_error_with_no_figures() -> None:
    analysis = unreadable("admin listener 127.0.0.1:9901: connection refused")
    assert analysis.outcome is Outcome.ERROR
    assert (
        analysis.reason == "figures unreadable: admin listener 127.0.0.1:9901: connection refused"
    )
    assert analysis.checks == ()
    assert analysis.sample is None
    assert json.loads(json.dumps(analysis.as_document(), allow_nan=False)) == {
        "outcome": "error",
        "reason": analysis.reason,
        "signal": None,
        "legacy": None,
        "guard_tripped": None,
        "seconds": None,
        "checks": [],
    }


def test_the_document_rounds_the_figures() -> None:
    analysis = analyse(sample(side(3000, 7)), AUTOPILOT, PROMOTION, GUARD)
    document = analysis.as_document()
    assert document["signal"] is not None
    assert document["signal"]["error_rate"] == 0.002333
    assert document["seconds"] == 60.0
    assert document["checks"][0]["value"] == 0.002333


def test_analyse_is_pure() -> None:
    s = sample(side(1000, 9, p95=180.0))
    first = analyse(s, AUTOPILOT, PROMOTION, GUARD)
    assert [analyse(s, AUTOPILOT, PROMOTION, GUARD) for _ in range(3)] == [first] * 3
    assert isinstance(first, Analysis)
    assert s == sample(side(1000, 9, p95=180.0))
