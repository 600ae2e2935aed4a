"""The progress report's sections about figures: per stage against the criteria,
fallbacks, the shadow comparison and the smoke test."""

from __future__ import annotations

from typing import Any

from proxy.control import markdown as md
from proxy.control.figures import match_rate
from proxy.control.progress_inputs import (
    FAIL,
    NO_LIVE,
    NOT_JUDGED,
    PASS,
    Line,
    Live,
    ReportInputs,
    ms_text,
    percent_text,
    rate_text,
    time_text,
    what_text,
)
from proxy.rollout.analysis import Check, Kind
from proxy.rollout.stages import (
    Figures,
    Status,
    Verdict,
    judge,
)


def figures_per_stage(inputs: ReportInputs, in_range: list[Line]) -> list[str]:
    config = inputs.config
    p, g, ap = config.promotion, config.guard, config.autopilot
    lines = [
        "## Figures per stage",
        "",
        f"Promotion criteria: signal error rate < {rate_text(p.max_error_rate)} and p95 < "
        f"{p.max_p95_ms:g} ms over at least {p.min_requests} signal requests in the window"
        + (
            f" (an autopilot analysis needs {ap.min_requests} attempts per {ap.interval:g} s "
            "interval)"
            if ap.enabled
            else ""
        )
        + f". Guard triggers: error rate > {rate_text(g.max_error_rate)} or p95 > "
        f"{g.max_p95_ms:g} ms once {g.min_requests} requests are in the "
        f"{g.window_seconds} s window. The autopilot's rows are judged on the thresholds it "
        "analysed with; a person's changes and the live window on the config's.",
        "",
    ]
    rows = []
    for event in in_range:
        figures = event.entry.get("figures")
        live = event.entry.get("live")
        if event.autopilot and isinstance(figures, dict):
            rows.append(_analysis_row(inputs, event, figures))
        elif not event.autopilot and isinstance(live, dict):
            row = _live_row(inputs, event, live)
            if row is not None:
                rows.append(row)
    if inputs.live is not None:
        rows.append(_current_row(inputs, inputs.live))
    if not rows:
        return [*lines, f"No figures recorded in this range, and {NO_LIVE}."]
    header = [
        "Stage",
        "Time",
        "Figures from",
        "Signal requests",
        "Error rate",
        "p95",
        "Promotion criteria",
        "Guard triggers",
        "Verdict",
    ]
    lines += md.table(header, rows)
    if inputs.live is None:
        lines += [
            "",
            f"The current stage: {NO_LIVE}.",
        ]
    return lines


def _stage_of(event: Line) -> str:
    pct = event.in_force
    return "unknown" if pct is None else percent_text(pct)


def _analysis_row(inputs: ReportInputs, event: Line, doc: dict[str, Any]) -> list[str]:
    """A decision's analysis: its own checks, each beside the threshold it was judged on."""
    signal = doc.get("signal") if isinstance(doc.get("signal"), dict) else {}
    attempts, rate, p95 = (_number(signal, k) for k in ("attempts", "error_rate", "p95_ms"))
    seconds = doc.get("seconds")
    over = f" over {seconds:.0f} s" if isinstance(seconds, int | float) else ""
    checks = [c for c in doc.get("checks") or [] if isinstance(c, dict)]
    passes = [c for c in checks if c.get("kind") == Kind.PASS.value]
    fails = [c for c in checks if c.get("kind") == Kind.FAIL.value]
    if not passes:
        promotion = f"{NOT_JUDGED} not judged"
    else:
        unmet = [c for c in passes if c.get("ok") is False]
        promotion = f"{FAIL} " + "; ".join(map(_describe, unmet)) if unmet else f"{PASS} met"
    if doc.get("guard_tripped"):
        guard = f"{FAIL} a proxy's guard is tripped"
    elif not fails:
        guard = f"{NOT_JUDGED} not judged"
    else:
        breached = [c for c in fails if c.get("ok") is False]
        guard = f"{FAIL} " + "; ".join(map(_describe, breached)) if breached else f"{PASS} clear"
    return [
        _stage_of(event),
        time_text(event.at),
        f"autopilot {md.text(event.entry.get('event') or '')} analysis{over}",
        "n/a" if attempts is None else f"{attempts:g}",
        "n/a" if rate is None else rate_text(rate),
        ms_text(p95),
        promotion,
        guard,
        md.text(doc.get("outcome", "?")),
    ]


def _number(doc: Any, key: str) -> float | None:
    """A figure from a recorded document; None when absent or not a number (an older or
    damaged line must not stop the report)."""
    value = doc.get(key) if isinstance(doc, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _describe(doc: dict[str, Any]) -> str:
    """`signal p95 230 ms (needs < 200 ms): not met`, in the analysis' own wording."""
    try:
        value, threshold = doc["value"], doc["threshold"]
        check = Check(
            name=str(doc["name"]),
            kind=Kind(doc["kind"]),
            value=None if value is None else float(value),
            threshold=float(threshold),
            rule=str(doc["rule"]),
            ok=None if doc["ok"] is None else bool(doc["ok"]),
            note=str(doc.get("note", "")),
        )
    except (KeyError, TypeError, ValueError):
        return md.text(doc.get("name", "a check not in the form this rollout-proxy reads"))
    return md.text(check.describe())


def _live_row(inputs: ReportInputs, event: Line, live: dict[str, Any]) -> list[str] | None:
    """A person's change: the live window the CLI read just before writing it."""
    upstreams = live.get("upstreams")
    signal = upstreams.get("signal") if isinstance(upstreams, dict) else None
    if not isinstance(signal, dict):
        return None
    try:
        figures = Figures(
            int(signal["requests"]), float(signal["error_rate"]), _optional(signal["p95_ms"])
        )
    except (KeyError, TypeError, ValueError):
        return None
    verdict = judge(figures, inputs.config.promotion, inputs.config.guard)
    return [
        _stage_of(event),
        time_text(event.at),
        f"{what_text(event)}: live window at the change",
        *_judged_cells(figures, verdict, tripped=bool(live.get("guard_tripped")), reason=None),
    ]


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


def _current_row(inputs: ReportInputs, live: Live) -> list[str]:
    signal = live.figures["signal"]
    figures = Figures(signal.requests, signal.error_rate, signal.p95_ms)
    verdict = judge(figures, inputs.config.promotion, inputs.config.guard)
    return [
        f"{percent_text(inputs.config.rollout.percentage)} (now)",
        time_text(inputs.now),
        f"live: {md.text(live.source)}",
        *_judged_cells(figures, verdict, tripped=live.guard.tripped, reason=live.guard.reason),
    ]


def _judged_cells(
    figures: Figures, verdict: Verdict, *, tripped: bool, reason: str | None
) -> list[str]:
    """Requests, error rate, p95, the promotion and guard cells and the recommendation."""
    promotion = verdict.promotion
    if any(c.status is Status.NOT_ENOUGH_DATA for c in promotion):
        count = promotion[0]  # "signal requests in window"
        promo = f"{NOT_JUDGED} not enough data: {count.actual} requests, needs {count.target}"
    elif verdict.promotable:
        promo = f"{PASS} met"
    else:
        unmet = [c for c in promotion if c.status is Status.FAIL]
        promo = f"{FAIL} " + "; ".join(
            md.text(f"{c.name} {c.actual}, needs {c.target}") for c in unmet
        )
    rollback = verdict.rollback
    if tripped:
        guard = f"{FAIL} guard tripped" + (f": {md.text(reason)}" if reason else "")
    elif any(c.status is Status.FAIL for c in rollback):
        breached = [c for c in rollback if c.status is Status.FAIL]
        guard = f"{FAIL} " + "; ".join(
            md.text(f"{c.name} {c.actual}, needs {c.target}") for c in breached
        )
    elif any(c.status is Status.NOT_ENOUGH_DATA for c in rollback):
        guard = f"{NOT_JUDGED} not judged: fewer requests than the guard's minimum"
    else:
        guard = f"{PASS} clear"
    return [
        str(figures.requests),
        rate_text(figures.error_rate),
        ms_text(figures.p95_ms),
        promo,
        guard,
        verdict.recommendation.value,
    ]


def fallbacks(inputs: ReportInputs) -> list[str]:
    lines = ["## Fallbacks", ""]
    live = inputs.live
    if live is None:
        return [*lines, f"Unknown: {NO_LIVE}."]
    if not live.fallbacks:
        return [*lines, f"No request fell back to legacy {md.text(live.counted)}."]
    text = f"**{live.fallbacks}** requests fell back to legacy {md.text(live.counted)}"
    reasons = {r: n for r, n in sorted(live.fallback_reasons.items()) if n}
    if reasons:
        text += ", by reason: " + ", ".join(f"{md.text(r)} {n}" for r, n in reasons.items())
    window = live.figures["signal"]
    return [
        *lines,
        text + ".",
        "",
        f"Signal in the current window: {window.requests} attempts, {window.errors} errors.",
    ]


def shadow(inputs: ReportInputs) -> list[str]:
    lines = ["## Shadow comparison", ""]
    live = inputs.live
    if live is None:
        return [*lines, f"Unknown: {NO_LIVE}."]
    enabled = inputs.config.shadow.enabled
    if not live.shadow:
        state = "on" if enabled else "off: `shadow.enabled: false`"
        return [*lines, f"No shadow comparison {md.text(live.counted)} (shadow {state})."]
    rows = []
    for feature, counts in sorted(live.shadow.items()):
        rate = match_rate(counts)
        rows.append(
            [
                md.text(feature),
                str(counts.get("match", 0) + counts.get("mismatch", 0)),
                str(counts.get("match", 0)),
                str(counts.get("mismatch", 0)),
                str(counts.get("error", 0)),
                str(counts.get("dropped", 0)),
                "n/a" if rate is None else f"{rate * 100:.1f} %",
            ]
        )
    lines += [
        f"Signal's answers against legacy's, {md.text(live.counted)} "
        "(`rollout diff` shows the mismatches):",
        "",
    ]
    header = ["Feature", "Compared", "Match", "Mismatch", "Errors", "Dropped", "Match rate"]
    return lines + md.table(header, rows)


def smoke_test(inputs: ReportInputs) -> list[str]:
    lines = ["## Smoke test", ""]
    smoke = inputs.smoke
    if smoke.not_run is not None:
        return [*lines, f"Not run: {md.text(smoke.not_run)}."]
    rows = [
        [
            md.text(c.target),
            md.code(c.path),
            "-" if c.status is None else str(c.status),
            f"{c.latency_ms:.1f}",
            md.text(c.served_by or ""),
            f"{PASS} ok" if c.ok else f"{FAIL} failed: {md.text(c.error or f'HTTP {c.status}')}",
        ]
        for c in smoke.checks
    ]
    failed = [c for c in smoke.checks if not c.ok]
    verdict = (
        f"{FAIL} {len(failed)} of {len(smoke.checks)} checks failed."
        if failed
        else f"{PASS} All {len(smoke.checks)} checks passed."
    )
    table = md.table(["Target", "Path", "Status", "ms", "Served by", "Result"], rows)
    return [
        *lines,
        "`rollout test`: through the proxy and against each upstream directly.",
        "",
        *table,
        "",
        verdict,
    ]
