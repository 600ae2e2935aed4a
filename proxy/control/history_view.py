"""`rollout history`: the change log, newest last, with the figures each decision saw."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from proxy.config.values import format_value
from proxy.control.console import EXIT_OK, Console
from proxy.records.history import HistoryEntry, history_path, read_entries
from proxy.rollout.analysis import Check, Kind

DEFAULT_LAST = 20


def cmd_history(args: argparse.Namespace) -> int:
    path = history_path(args.config_path)
    con = Console()
    if not path.exists():
        if args.json:
            con.line("[]")
        else:
            con.info(f"no history yet ({path})")
        return EXIT_OK
    entries, bad = read_entries(args.config_path)
    # Warnings go to stderr under --json, so the array on stdout stays parseable.
    warn = Console(out=sys.stderr) if args.json else con
    for number in bad:
        warn.warning(f"{path} line {number} is not a history entry: skipped")
    shown = entries[-args.last :] if args.last else entries
    if args.json:
        con.line(json.dumps(shown, indent=2, ensure_ascii=False))
        return EXIT_OK
    for entry in shown:
        con.line(entry_line(entry))
        if "figures" in entry and entry["figures"] is not None:
            con.line("    " + figures_line(entry["figures"]))
    if len(shown) < len(entries):
        con.line(
            con.paint(f"({len(entries) - len(shown)} older entries: --last 0 shows all)", "DIM")
        )
    return EXIT_OK


def entry_line(entry: HistoryEntry) -> str:
    """`2026-12-03T10:00:00+00:00  ana@ops1  rollout promote  rollout.percentage 10 -> 30
    (reason: healthy)`."""
    autopilot = entry.get("command") == "autopilot"
    who = "autopilot" if autopilot else f"{entry.get('user', '?')}@{entry.get('host', '?')}"
    what = str(entry.get("event") or entry["command"]) if autopilot else entry["command"]
    if entry.get("forced"):
        what += " (forced)"
    parts = [entry["time"], who, what]
    change = _change(entry.get("before"), entry.get("after"))
    if change:
        parts.append(change)
    if entry.get("reason"):
        parts.append(f"(reason: {entry['reason']})")
    return "  ".join(parts)


def _change(before: Any, after: Any) -> str:
    """`rollout.percentage 10 -> 30`, one per key either side names."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        if before is None and after is None:
            return ""
        return f"{_value(before)} -> {_value(after)}"
    keys = list(before) + [k for k in after if k not in before]
    return ", ".join(f"{k} {_value(before.get(k))} -> {_value(after.get(k))}" for k in keys)


def _value(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return format_value(value)


def figures_line(figures: Any) -> str:
    """The analysis a decision saw: its outcome, the signal sample, the criteria beside
    their thresholds and any breached trigger."""
    try:
        outcome = str(figures["outcome"])
        checks = [_check(c) for c in figures.get("checks") or []]
        signal = figures.get("signal")
        parts = []
        if isinstance(signal, dict):
            seconds = figures.get("seconds")
            over = f" in {seconds:.0f} s" if isinstance(seconds, int | float) else ""
            parts.append(f"{signal['attempts']} signal attempts{over}")
        # A failure is told by its breached triggers; otherwise the criteria tell it.
        breached = [c for c in checks if c.kind is Kind.FAIL and c.ok is False]
        shown = breached or [c for c in checks if c.kind is Kind.PASS]
        parts += [c.describe() for c in shown]
        if not shown:
            parts.append(str(figures.get("reason", "")))
    except (KeyError, TypeError, ValueError, AttributeError):
        return "figures: not in the form this rollout-proxy reads"
    return f"{outcome}: " + "; ".join(p for p in parts if p)


def _check(doc: dict[str, Any]) -> Check:
    """A check rebuilt from its document, for its own wording."""
    value = doc["value"]
    return Check(
        name=str(doc["name"]),
        kind=Kind(doc["kind"]),
        value=None if value is None else float(value),
        threshold=float(doc["threshold"]),
        rule=str(doc["rule"]),
        ok=None if doc["ok"] is None else bool(doc["ok"]),
        note=str(doc.get("note", "")),
    )
