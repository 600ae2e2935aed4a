"""`rollout approve`, `pause` and `resume`: the operator's word to the autopilot (SPEC 13).

They write only the operator's part of `rollout-autopilot.json` (the controller reads it
at its next analysis) and one history line each; the config file is not touched.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from proxy.config.load import load_config
from proxy.config.values import Config, format_value
from proxy.control.console import EXIT_OK, EXIT_USAGE, Console
from proxy.records.history import current_user, record
from proxy.records.pilot_state import (
    OperatorState,
    PauseState,
    StateFileError,
    read_state,
    update_operator,
)


def cmd_approve(args: argparse.Namespace) -> int:
    config = load_config(args.config_path)
    con = Console()
    try:
        new = update_operator(args.config_path, lambda op: {**op, "approvals": op["approvals"] + 1})
        controller = read_state(args.config_path)["controller"] or {}
    except StateFileError as exc:
        con.error(str(exc))
        return EXIT_USAGE
    count = new["approvals"]
    _record(
        args, "rollout approve", {"autopilot.approvals": count - 1}, {"autopilot.approvals": count}
    )
    waiting = controller.get("waiting_gate")
    if isinstance(waiting, int | float) and not isinstance(waiting, bool):
        con.success(
            f"approved: the autopilot promotes to {format_value(float(waiting))} % "
            "at its next analysis that does not fail"
        )
    else:
        gate = next_gate(config)
        if gate is None:
            con.success(
                f"approved, but no gate lies ahead of {format_value(config.rollout.percentage)} % "
                f"(autopilot.gates {format_value(config.autopilot.gates)}): nothing waits for it"
            )
        else:
            con.success(
                f"approved ahead: the next gate ({format_value(gate)} %) opens when the "
                "autopilot reaches it"
            )
    _warn_disabled(con, config, args)
    return EXIT_OK


def next_gate(config: Config) -> float | None:
    """The lowest gate above the file's percentage."""
    ahead = [g for g in config.autopilot.gates if g > config.rollout.percentage]
    return min(ahead) if ahead else None


def cmd_pause(args: argparse.Namespace) -> int:
    config = load_config(args.config_path)
    con = Console()
    pause: PauseState = {
        "reason": args.reason,
        "user": current_user(),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    earlier: list[OperatorState] = []

    def change(op: OperatorState) -> OperatorState:
        earlier.append(op)
        return op if op["pause"] is not None else {**op, "pause": pause}

    try:
        update_operator(args.config_path, change)
    except StateFileError as exc:
        con.error(str(exc))
        return EXIT_USAGE
    old = earlier[-1]["pause"]
    if old is not None:
        why = f" ({old['reason']})" if old["reason"] else ""
        con.info(f"already paused by {old['user']} since {old['time']}{why}: nothing to change")
        return EXIT_OK
    _record(args, "rollout pause", {"autopilot.paused": False}, {"autopilot.paused": True})
    con.success("paused: the autopilot keeps analysing but moves nothing until `rollout resume`")
    _warn_disabled(con, config, args)
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    config = load_config(args.config_path)
    con = Console()
    earlier: list[OperatorState] = []

    def change(op: OperatorState) -> OperatorState:
        earlier.append(op)
        return {**op, "pause": None, "resumes": op["resumes"] + 1}

    try:
        new = update_operator(args.config_path, change)
    except StateFileError as exc:
        con.error(str(exc))
        return EXIT_USAGE
    old = earlier[-1]
    _record(
        args,
        "rollout resume",
        {"autopilot.paused": old["pause"] is not None, "autopilot.resumes": old["resumes"]},
        {"autopilot.paused": False, "autopilot.resumes": new["resumes"]},
    )
    if old["pause"] is not None:
        con.success(
            f"resumed: the pause by {old['pause']['user']} since {old['pause']['time']} is "
            "lifted; the autopilot decides again at its next analysis"
        )
    else:
        con.success(
            "resumed: no `rollout pause` was in force; any pause the autopilot put itself in "
            "(after a rollback, or waiting for traffic) is lifted at its next analysis"
        )
    _warn_disabled(con, config, args)
    return EXIT_OK


def _record(args: argparse.Namespace, command: str, before: object, after: object) -> None:
    record(
        args.config_path, command=command, before=before, after=after, reason=args.reason, live=None
    )


def _warn_disabled(con: Console, config: Config, args: argparse.Namespace) -> None:
    if not config.autopilot.enabled:
        con.warning(
            f"autopilot.enabled is false in {args.config_path}: recorded, but no controller "
            "acts on it until it is enabled"
        )
