"""What `rollout report --markdown` is built from (SPEC 14), and the words it shows them in.

The inputs are values gathered by `progress_view.py`; the history becomes a timeline of
`Line`s that knows the percentage in force at each line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from proxy.config.values import Config, format_value
from proxy.control import markdown as md
from proxy.control.figures import Shadow, SideFigures
from proxy.control.smoke import Check as SmokeCheck
from proxy.records.history import HistoryEntry
from proxy.rollout.stages import describe_stage

DEFAULT_SINCE = "24h"
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

NO_LIVE = "no live figures (the summary says why)"
PASS, FAIL, NOT_JUDGED = "✅", "❌", "⚪"  # beside a criterion: met, breached, not judged


def parse_duration(value: str) -> int:
    """`30m`, `24h`, `7d` in seconds (also `s` and `w`: the units Prometheus shares).
    `ValueError` naming the value otherwise."""
    match = _DURATION.fullmatch(value.strip())
    if match is None or int(match[1]) == 0:
        raise ValueError(
            f"{value!r} is not a duration: a whole number and one of s, m, h, d, w (30m, 24h, 7d)"
        )
    return int(match[1]) * _UNIT_SECONDS[match[2]]


# --- inputs -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuardNow:
    """The guard as the proxy (or Prometheus) reports it now."""

    enabled: bool | None  # None: not known (Prometheus has no such metric)
    tripped: bool
    reason: str | None = None
    tripped_at: float | None = None
    replicas_tripped: int | None = None  # Prometheus: replicas whose gauge says 1
    changes: int | None = None  # Prometheus: trips and re-arms over the range, all replicas


@dataclass(frozen=True, slots=True)
class Live:
    """What the running proxy, or Prometheus over every replica, says now."""

    source: str  # "admin http://127.0.0.1:9180, this replica, last 60 s"
    figures: Mapping[str, SideFigures]  # "signal", "legacy": the current stage's window
    served: float | None  # the percentage the proxy has loaded (admin only)
    guard: GuardNow
    fallbacks: int
    fallback_reasons: Mapping[str, int]  # reason -> count; empty when not broken down
    shadow: Shadow
    counted: str  # the span of `fallbacks` and `shadow`: "since the proxy started 2 h ago"


@dataclass(frozen=True, slots=True)
class Smoke:
    """`rollout test`'s checks, or why they were not run."""

    checks: tuple[SmokeCheck, ...] = ()
    not_run: str | None = None


@dataclass(frozen=True, slots=True)
class PilotNow:
    """The autopilot's standing, from its state file and lock."""

    enabled: bool
    next_action: str | None  # None: it has never run on this config
    running: str | None  # "pid 4242 on ops1"; None: no controller holds the lock


@dataclass(frozen=True, slots=True)
class ReportInputs:
    config: Config
    config_path: str
    entries: Sequence[HistoryEntry]  # the whole history, oldest first
    since: str  # the range as typed: "24h"
    start: float  # Unix seconds: the range is [start, now]
    now: float
    live: Live | None
    live_error: str | None  # why `live` is None
    smoke: Smoke
    pilot: PilotNow
    skipped_lines: tuple[int, ...] = ()  # history lines that were not entries


# --- the history as a timeline ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    entry: HistoryEntry
    at: float
    before: float | None  # rollout.percentage before and after, when this line moved it
    after: float | None
    in_force: float | None  # the percentage when the line was written (before its move)
    previous: float | None  # the percentage the lines before this one had left

    @property
    def autopilot(self) -> bool:
        return self.entry["command"] == "autopilot"

    @property
    def moved(self) -> bool:
        """A new percentage. The autopilot's `human_change` after a person's `rollout set`
        records the same move again: not a second one."""
        if self.after is None:
            return False
        return self.after != (self.previous if self.previous is not None else self.before)


def timeline(entries: Sequence[HistoryEntry]) -> list[Line]:
    events = []
    current: float | None = None
    for entry in entries:
        at = _parse_time(entry["time"])
        if at is None:
            continue
        before = _percentage(entry.get("before"))
        after = _percentage(entry.get("after"))
        in_force = before if before is not None else current
        events.append(Line(entry, at, before, after, in_force, current))
        if after is not None:
            current = after
    return events


def _parse_time(value: str) -> float | None:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # the history writes UTC
    return parsed.timestamp()


def _percentage(side: Any) -> float | None:
    if isinstance(side, dict):
        value = side.get("rollout.percentage")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


# --- wording ----------------------------------------------------------------------------


def time_text(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def percent_text(value: float) -> str:
    return f"{format_value(value)} %"


def rate_text(value: float) -> str:
    return f"{value * 100:.2f} %"


def ms_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def stage_text(config: Config, percentage: float) -> str:
    return f"{describe_stage(config.rollout.stages, percentage)}, {percent_text(percentage)}"


def who_text(event: Line) -> str:
    if event.autopilot:
        return "autopilot"
    e = event.entry
    return md.text(f"{e.get('user', '?')}@{e.get('host', '?')}")


def what_text(event: Line) -> str:
    e = event.entry
    if event.autopilot:
        return md.text(e.get("event") or "autopilot")
    return md.code(e["command"]) + (" (forced)" if e.get("forced") else "")


def by_text(event: Line) -> str:
    return f"{who_text(event)} ({what_text(event)})"


def mover_text(event: Line) -> str:
    """Who moved the percentage. A `human_change` line is the autopilot noticing an edit
    made outside the CLI (the CLI's own line would have made the move already)."""
    if event.autopilot and event.entry.get("event") == "human_change":
        seen = md.text("human_change")
        return f"a person, editing the file outside the CLI (seen by the autopilot: {seen})"
    return by_text(event)


def change_text(before: Any, after: Any) -> str:
    """`rollout.percentage 10 -> 30`, one per key either side names."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        if before is None and after is None:
            return ""
        return f"{_value(before)} -> {_value(after)}"
    keys = list(before) + [k for k in after if k not in before]
    return ", ".join(
        f"{md.text(k)} {_value(before.get(k))} -> {_value(after.get(k))}" for k in keys
    )


def _value(value: Any) -> str:
    return md.text(format_value(value))


def guard_text(guard: GuardNow) -> str:
    if guard.replicas_tripped is not None:
        if guard.tripped:
            return f"**TRIPPED** on {guard.replicas_tripped} replica(s)"
        return "armed on every replica"
    if guard.tripped:
        since = f" since {time_text(guard.tripped_at)}" if guard.tripped_at is not None else ""
        return f"**TRIPPED**{since}: {md.text(guard.reason or 'no reason given')}"
    if guard.enabled is False:
        return "off (`guard.enabled: false`): nothing rolls back by itself"
    return "armed"
