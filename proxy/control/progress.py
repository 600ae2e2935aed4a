"""`rollout report --markdown`: the migration's progress report (SPEC 14), built from values.

The document a migration team otherwise writes by hand every day or two: the stage reached
and when, every change with who or what made it and why, the figures each stage showed
against the promotion criteria and guard triggers, guard trips, fallbacks, the autopilot's
decisions, the shadow match rate, the smoke test and the next step. Everything in it is
derived from `ReportInputs` (the history, the config, what the proxy or Prometheus says
now, the smoke test's checks, the autopilot's state); gathering them is
`progress_view.py`'s job, so this module does no I/O and takes the clock as a value.

The figures of a past stage are the evidence recorded when it was left: an autopilot
decision carries the analysis it decided on (judged on the thresholds of its day), a
person's edit carries the live window the CLI read before writing (judged here on the
config's thresholds). The current stage's are the live window's.
"""

from __future__ import annotations

from proxy import __version__
from proxy.control import markdown as md
from proxy.control.progress_figures import (
    fallbacks,
    figures_per_stage,
    shadow,
    smoke_test,
)
from proxy.control.progress_history import (
    changes,
    decisions,
    guard_trips,
    stages_reached,
)
from proxy.control.progress_inputs import (
    NO_LIVE,
    Line,
    PilotNow,
    ReportInputs,
    guard_text,
    mover_text,
    percent_text,
    stage_text,
    time_text,
    timeline,
)
from proxy.rollout.stages import (
    Figures,
    judge,
    next_stage,
    promotion_blockers,
)


def build_report(inputs: ReportInputs) -> str:
    """The whole report as GitHub-flavoured Markdown."""
    history = timeline(inputs.entries)
    in_range = [e for e in history if e.at >= inputs.start]
    sections = [
        _title(inputs),
        _summary(inputs, history),
        stages_reached(inputs, history, in_range),
        changes(in_range),
        figures_per_stage(inputs, in_range),
        decisions(inputs, in_range),
        guard_trips(inputs, in_range),
        fallbacks(inputs),
        shadow(inputs),
        smoke_test(inputs),
        _next_step(inputs),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _title(inputs: ReportInputs) -> list[str]:
    lines = [
        "# Rollout progress report",
        "",
        f"{time_text(inputs.start)} to {time_text(inputs.now)} (last {md.text(inputs.since)}) · "
        f"config {md.code(inputs.config_path)} · rollout-proxy {md.text(__version__)}",
    ]
    if inputs.skipped_lines:
        numbers = ", ".join(str(n) for n in inputs.skipped_lines)
        if len(inputs.skipped_lines) == 1:
            lines += ["", f"History line {numbers} is not an entry and is left out."]
        else:
            lines += ["", f"History lines {numbers} are not entries and are left out."]
    return lines


def _summary(inputs: ReportInputs, history: list[Line]) -> list[str]:
    config, live = inputs.config, inputs.live
    r = config.rollout
    lines = ["## Summary", "", f"- **Stage:** {stage_text(config, r.percentage)} to signal"]
    own = [f for f in r.features if f.percentage is not None]
    if own:
        features = ", ".join(f"{md.text(f.name)} {percent_text(f.percentage or 0.0)}" for f in own)
        lines.append(f"- **Features with their own percentage:** {features}")
    moves = [e for e in history if e.moved]
    if moves and moves[-1].after == r.percentage:
        last = moves[-1]
        lines.append(f"- **Reached:** {time_text(last.at)} by {mover_text(last)}")
    elif moves:
        # The file says otherwise than the history's last move: edited by hand since.
        last = moves[-1]
        assert last.after is not None
        lines.append(
            f"- **Reached:** not in the history: its last change set "
            f"{percent_text(last.after)} at {time_text(last.at)}; the file was edited by hand since"
        )
    else:
        lines.append("- **Reached:** not in the history (set before it began, or by hand)")
    lines.append(
        "- **Emergency:** ON: everything goes to legacy" if r.emergency else "- **Emergency:** off"
    )
    if live is None:
        lines.append("- **Guard:** unknown (no live figures)")
    else:
        lines.append(f"- **Guard:** {guard_text(live.guard)}")
    lines.append(f"- **Autopilot:** {_pilot_standing(inputs.pilot)}")
    if live is None:
        lines.append(f"- **Live figures:** unavailable: {md.text(inputs.live_error)}")
    else:
        lines.append(f"- **Live figures:** {md.text(live.source)}")
    return lines


def _pilot_standing(pilot: PilotNow) -> str:
    if not pilot.enabled:
        return "off (`autopilot.enabled: false`)"
    running = f"running ({md.text(pilot.running)})" if pilot.running else "not running now"
    if pilot.next_action is None:
        return f"{running}; it has not run on this config yet"
    return running


def _next_step(inputs: ReportInputs) -> list[str]:
    lines = ["## Next step", ""]
    config, live, pilot = inputs.config, inputs.live, inputs.pilot
    r = config.rollout
    if pilot.enabled:
        if pilot.next_action is None:
            return [
                *lines,
                "The autopilot has not run on this config yet: start `rollout autopilot`.",
            ]
        text = f"Autopilot: {md.prose(pilot.next_action)}."
        if pilot.running is None:
            text += " No controller runs now: nothing happens until `rollout autopilot` is started."
        return [*lines, text]
    target = next_stage(r.stages, r.percentage)
    if target is None:
        return [
            *lines,
            f"At the last stage ({percent_text(r.percentage)}): nothing more to promote.",
        ]
    if live is None:
        return [
            *lines,
            f"Promote to {percent_text(target)} (`rollout promote`): cannot be judged: {NO_LIVE}.",
        ]
    signal = live.figures["signal"]
    verdict = judge(
        Figures(signal.requests, signal.error_rate, signal.p95_ms), config.promotion, config.guard
    )
    blockers = promotion_blockers(
        verdict,
        configured=r.percentage,
        served=r.percentage if live.served is None else live.served,
        emergency=r.emergency,
        guard_trip=(live.guard.reason or "tripped") if live.guard.tripped else None,
    )
    if not blockers:
        return [
            *lines,
            f"Ready to promote to {percent_text(target)}: the criteria hold on live figures "
            "(`rollout promote`).",
        ]
    return [
        *lines,
        f"Promote to {percent_text(target)} (`rollout promote`) waits for:",
        "",
        *(f"- {md.prose(b)}" for b in blockers),
    ]
