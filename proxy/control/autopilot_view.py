"""`rollout autopilot` and `rollout autopilot status`: run the controller, or say where it
stands and what it will do next (SPEC 13)."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from typing import Any, TypedDict

from proxy.config.load import load_config
from proxy.control.autopilot import run_autopilot
from proxy.control.console import EXIT_OK, EXIT_USAGE, Console
from proxy.records.pilot_document import (
    AnalysisEntry,
    controller_document,
    operator_of,
    pilot_state,
)
from proxy.records.pilot_state import StateFileError, lock_holder, read_state
from proxy.rollout.pilot import duration_text, next_action
from proxy.rollout.stages import describe_stage

SHOWN_ANALYSES = 5


def cmd_autopilot(args: argparse.Namespace) -> int:
    if args.action == "status":
        return _status(args)
    return run_autopilot(
        args.config_path, once=bool(args.once), dry_run=bool(args.dry_run), admin=args.admin
    )


class StatusView(TypedDict):
    enabled: bool
    running: dict[str, Any] | None
    percentage: float
    stage: str
    baked_seconds: float | None
    bake_seconds: float
    passes: int | None
    checks: int
    failures: int | None
    failure_limit: int
    inconclusive: int | None
    errors: int | None
    pause: str | None
    pause_reason: str | None
    waiting_gate: float | None
    approved: bool
    held: str | None
    next_action: str
    next_at: float | None
    analyses: list[AnalysisEntry]


def _status(args: argparse.Namespace) -> int:
    con = Console()
    config = load_config(args.config_path)
    try:
        saved = read_state(args.config_path)
    except StateFileError as exc:
        con.error(str(exc))
        return EXIT_USAGE
    ap, r = config.autopilot, config.rollout
    operator = operator_of(saved["operator"])
    doc = controller_document(saved["controller"])
    now = time.time()
    view: StatusView = {
        "enabled": ap.enabled,
        "running": lock_holder(args.config_path),
        "percentage": r.percentage,
        "stage": describe_stage(r.stages, r.percentage),
        "baked_seconds": None,
        "bake_seconds": ap.bake,
        "passes": None,
        "checks": ap.checks,
        "failures": None,
        "failure_limit": ap.failure_limit,
        "inconclusive": None,
        "errors": None,
        "pause": None,
        "pause_reason": None,
        "waiting_gate": None,
        "approved": False,
        "held": None,
        "next_action": "the autopilot has not run on this config yet (`rollout autopilot`)",
        "next_at": None,
        "analyses": [],
    }
    if doc is not None:
        state = pilot_state(doc["state"])
        view["baked_seconds"] = round(now - state.stage_entered_at, 1)
        view["passes"] = state.passes
        view["failures"] = state.failures
        view["inconclusive"] = state.inconclusive
        view["errors"] = state.errors
        view["pause"] = None if state.pause is None else state.pause.value
        view["pause_reason"] = state.pause_reason
        view["waiting_gate"] = state.waiting_gate
        view["approved"] = operator.approvals > state.approvals_used
        view["held"] = doc["held"]
        view["next_action"] = next_action(state, ap, r.stages, operator, now)
        view["next_at"] = doc["next_at"]
        view["analyses"] = doc["analyses"][-SHOWN_ANALYSES:]
        if state.percentage != r.percentage:
            view["next_action"] = (
                f"notice the file's change to {r.percentage:g} % at its next analysis, "
                "then bake again"
            )
    if getattr(args, "json", False):
        print(json.dumps(view, indent=2, ensure_ascii=False))
        return EXIT_OK
    _print(con, view, enabled=ap.enabled)
    return EXIT_OK


def _print(con: Console, v: StatusView, *, enabled: bool) -> None:
    if not enabled:
        con.warning("autopilot.enabled is false: no controller acts on this config")
    holder = v["running"]
    if holder:
        running = f"running (pid {holder.get('pid')} on {holder.get('host')})"
    else:
        running = "not running"
    con.line(f"autopilot   {running}")
    baked = (
        ""
        if v["baked_seconds"] is None
        else (f"; baked {duration_text(v['baked_seconds'])} of {duration_text(v['bake_seconds'])}")
    )
    con.line(f"stage       {v['percentage']:g} % ({v['stage']}){baked}")
    if v["passes"] is not None:
        con.line(
            f"analyses    passes {v['passes']} of {v['checks']} needed; failures "
            f"{v['failures']} of {v['failure_limit']}; inconclusive {v['inconclusive']}; "
            f"unreadable {v['errors']}"
        )
    if v["pause"]:
        con.warning(f"paused      {v['pause']}: {v['pause_reason']}")
    if v["waiting_gate"] is not None:
        approved = "approved" if v["approved"] else "waiting for `rollout approve`"
        con.line(f"gate        {v['waiting_gate']:g} %: {approved}")
    if v["held"]:
        con.warning(f"held        {v['held']}")
    when = ""
    if not holder and v["passes"] is not None:
        when = " (once `rollout autopilot` runs again)"
    elif v["next_at"] is not None and not v["pause"]:
        when = f" (next analysis at {_clock(v['next_at'])})"
    con.line(f"next        {v['next_action']}{when}")
    if v["analyses"]:
        con.line("last analyses")
        for entry in v["analyses"]:
            a = entry["analysis"]
            con.line(
                f"  {_clock(entry['time'])}  {entry['percentage']:g} %  {a['outcome']:<12}  "
                f"{a['reason']}"
            )


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at).astimezone().strftime("%H:%M:%S")
