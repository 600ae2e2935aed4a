"""The progress report's sections read from the history: stages reached, changes, the
autopilot's decisions and the guard trips it recorded."""

from __future__ import annotations

from proxy.control import markdown as md
from proxy.control.history_view import figures_line
from proxy.control.progress_inputs import (
    NO_LIVE,
    Line,
    ReportInputs,
    by_text,
    change_text,
    guard_text,
    mover_text,
    percent_text,
    stage_text,
    time_text,
    what_text,
    who_text,
)
from proxy.rollout.stages import describe_stage


def stages_reached(inputs: ReportInputs, timeline: list[Line], in_range: list[Line]) -> list[str]:
    config = inputs.config
    moves = [e for e in in_range if e.moved]
    earlier = [e for e in timeline if e.at < inputs.start and e.moved]
    lines = ["## Stages reached", ""]
    rows = []
    if earlier:
        last = earlier[-1]
        assert last.after is not None
        rows.append(
            [
                describe_stage(config.rollout.stages, last.after),
                percent_text(last.after),
                f"{time_text(last.at)} (before this range)",
                mover_text(last),
            ]
        )
    elif moves and moves[0].before is not None:
        first = moves[0].before
        rows.append(
            [
                describe_stage(config.rollout.stages, first),
                percent_text(first),
                "before this range",
                "-",
            ]
        )
    for event in moves:
        assert event.after is not None
        rows.append(
            [
                describe_stage(config.rollout.stages, event.after),
                percent_text(event.after),
                time_text(event.at),
                mover_text(event),
            ]
        )
    if not moves:
        pct = config.rollout.percentage
        lines.append(
            f"No stage change in this range: the rollout stayed at {stage_text(config, pct)}."
        )
        if rows:
            lines += ["", *md.table(["Stage", "Percentage", "Reached at", "By"], rows)]
        return lines
    return lines + md.table(["Stage", "Percentage", "Reached at", "By"], rows)


def changes(in_range: list[Line]) -> list[str]:
    lines = ["## Changes", ""]
    if not in_range:
        return [*lines, "No change recorded in this range."]
    rows = [
        [
            time_text(e.at),
            who_text(e),
            what_text(e),
            change_text(e.entry.get("before"), e.entry.get("after")),
            md.text(e.entry.get("reason") or ""),
        ]
        for e in in_range
    ]
    return lines + md.table(["Time", "Who", "Command or event", "Change", "Reason"], rows)


def decisions(inputs: ReportInputs, in_range: list[Line]) -> list[str]:
    lines = ["## Autopilot decisions", ""]
    decisions = [e for e in in_range if e.autopilot]
    if not decisions:
        off = "" if inputs.pilot.enabled else " (`autopilot.enabled: false`)"
        return [*lines, f"No autopilot decision in this range{off}."]
    rows = []
    for event in decisions:
        figures = event.entry.get("figures")
        if event.before is not None and event.after is not None:
            where = f"{percent_text(event.before)} -> {percent_text(event.after)}"
        else:
            where = "-" if event.in_force is None else percent_text(event.in_force)
        rows.append(
            [
                time_text(event.at),
                what_text(event),
                where,
                md.text(figures_line(figures)) if figures is not None else "",
                md.text(event.entry.get("reason") or ""),
            ]
        )
    return lines + md.table(["Time", "Decision", "Percentage", "Analysis", "Reason"], rows)


def guard_trips(inputs: ReportInputs, in_range: list[Line]) -> list[str]:
    lines = ["## Guard trips", ""]
    rows = []
    for event in in_range:
        figures = event.entry.get("figures")
        live = event.entry.get("live")
        if event.autopilot and isinstance(figures, dict) and figures.get("guard_tripped"):
            seen = md.text(figures.get("reason") or "a proxy's guard is tripped")
        elif not event.autopilot and isinstance(live, dict) and live.get("guard_tripped"):
            seen = "the guard was tripped when the change was made"
        else:
            continue
        pct = "-" if event.in_force is None else percent_text(event.in_force)
        rows.append([time_text(event.at), by_text(event), pct, seen])
    if rows:
        lines += md.table(["Time", "Seen by", "Percentage", "What was seen"], rows)
    else:
        lines.append("No guard trip recorded in the history in this range.")
    lines.append("")
    now = inputs.live
    if now is None:
        lines.append(f"Now: unknown: {NO_LIVE}.")
        return lines
    lines.append(f"Now: {guard_text(now.guard)}.")
    if now.guard.changes is not None:
        lines += [
            "",
            f"Over the last {md.text(inputs.since)} the guard changed state "
            f"{now.guard.changes} time(s) across replicas "
            f"(`changes(rollout_guard_tripped[{inputs.since}])`: a trip and its re-arm are "
            "two).",
        ]
    return lines
