"""The editing commands: set, stage, promote, rollback, emergency (SPEC 10).

Each edit is validated in full before writing, keeps the file's comments and layout
(`edit.py`), is written atomically, and leaves one line in the history file.
"""

from __future__ import annotations

import argparse
from typing import Any

from proxy.config.load import load_config, parse_config
from proxy.config.values import Config, format_value
from proxy.control.client import live_status
from proxy.control.console import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Console
from proxy.control.edit import set_value
from proxy.control.figures import signal_figures
from proxy.control.preview_view import preview, show_preview
from proxy.errors import ConfigError, EditError
from proxy.records.files import write_atomically
from proxy.records.history import record
from proxy.rollout.stages import (
    describe_stage,
    judge,
    next_stage,
    previous_stage,
    promotion_blockers,
)
from proxy.status import StatusDocument


def _live_summary(live: StatusDocument | None) -> dict[str, Any] | None:
    """What the history keeps of the live state: the evidence behind a move."""
    if live is None:
        return None
    return {
        "generation": live["config"]["generation"],
        "guard_tripped": live["guard"]["tripped"],
        "upstreams": live["upstreams"],
    }


def _apply_edit(
    args: argparse.Namespace,
    command: str,
    key: tuple[str, ...],
    value: float | bool,
    *,
    config: Config,
    forced: bool = False,
    live: StatusDocument | None = None,
    live_checked: bool = False,
) -> int:
    """Validate, write atomically, record history. Any refusal leaves the file untouched."""
    path = args.config_path
    con = Console()
    before_text = path.read_text(encoding="utf-8")
    before = _plain(_lookup(config, key))
    dotted = ".".join(key)
    if before == value:
        con.info(f"{dotted} is already {format_value(value)}: nothing to change")
        return EXIT_OK
    try:
        after_text = set_value(before_text, key, value)
        proposed = parse_config(after_text, str(path))
        if args.dry_run:
            change = f"{dotted} {format_value(before)} -> {format_value(value)}"
            return _dry_run(con, config, proposed, change, args)
        write_atomically(path, after_text)
    except ConfigError as exc:
        con.error(f"refused: the result would not be a valid configuration ({path} unchanged):")
        for problem in exc.problems:
            con.error(f"  - {problem}")
        return EXIT_USAGE
    except EditError as exc:
        con.error(f"refused: {exc} ({path} unchanged)")
        return EXIT_USAGE
    if live is None and not live_checked:
        live = live_status(config, args.admin)[0]
    record(
        path,
        command=command,
        before={dotted: before},
        after={dotted: _plain(value)},
        reason=args.reason,
        live=_live_summary(live),
        forced=forced,
    )
    new = load_config(path)
    stage = describe_stage(new.rollout.stages, new.rollout.percentage)
    con.success(
        f"{dotted} {format_value(before)} -> {format_value(value)} ({stage}); "
        "the proxy applies it within 2 s"
    )
    if not args.reason:
        con.warning("no --reason given; the history records the move without one")
    return EXIT_OK


def _dry_run(
    con: Console, config: Config, proposed: Config, change: str, args: argparse.Namespace
) -> int:
    """`--dry-run`: the change and who it moves (SPEC 10, 14); no file, no history."""
    stage = describe_stage(proposed.rollout.stages, proposed.rollout.percentage)
    con.info(f"dry run: {change} ({stage}); {args.config_path} not written, no history line")
    doc, where = preview(config, proposed, args.admin)
    show_preview(con, doc, where)
    return EXIT_OK


def _lookup(config: Config, key: tuple[str, ...]) -> Any:
    if key[:2] == ("rollout", "features"):
        feature = next(f for f in config.rollout.features if f.name == key[2])
        return feature.percentage
    value: Any = config
    for part in key:
        value = getattr(value, part)
    return value


def cmd_set(args: argparse.Namespace) -> int:
    config = load_config(args.config_path)
    con = Console()
    value = float(args.percentage)  # range and decimals are checked with the whole file
    if args.feature:
        names = [f.name for f in config.rollout.features]
        if args.feature not in names:
            con.error(f"unknown feature {args.feature!r}; configured: {', '.join(names) or 'none'}")
            return EXIT_USAGE
        key: tuple[str, ...] = ("rollout", "features", args.feature, "percentage")
    else:
        key = ("rollout", "percentage")
    return _apply_edit(args, _command_line(args), key, _number(value), config=config)


def _number(value: float) -> float:
    return float(int(value)) if value.is_integer() else value


def _plain(value: Any) -> Any:
    """10.0 -> 10 for the history and messages, as the operator wrote it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def cmd_stage(args: argparse.Namespace) -> int:
    config = load_config(args.config_path)
    stages = config.rollout.stages
    if not 0 <= args.n < len(stages):
        Console().error(
            f"stage {args.n} does not exist: rollout.stages has stages 0-{len(stages) - 1} "
            f"({', '.join(f'{s:g}' for s in stages)})"
        )
        return EXIT_USAGE
    return _apply_edit(
        args, _command_line(args), ("rollout", "percentage"), stages[args.n], config=config
    )


def cmd_promote(args: argparse.Namespace) -> int:
    config = load_config(args.config_path)
    con = Console()
    r = config.rollout
    target = next_stage(r.stages, r.percentage)
    if target is None:
        con.info(f"already at the last stage ({r.percentage:g} %): nothing to promote")
        return EXIT_OK
    live, where = live_status(config, args.admin)
    if live is None:
        if not args.force:
            con.error(f"cannot judge the promotion criteria: proxy not reachable ({where})")
            con.line("  (--force promotes without live figures; the history records it)")
            return EXIT_FAILED
        con.warning(f"proxy not reachable ({where}); promoting anyway (--force)")
    else:
        verdict = judge(signal_figures(live), config.promotion, config.guard)
        guard = live["guard"]
        blocked = promotion_blockers(
            verdict,
            configured=r.percentage,
            served=live["percentages"]["default"],
            emergency=r.emergency,
            guard_trip=guard["reason"] or "tripped" if guard["tripped"] else None,
        )
        if blocked and not args.force:
            con.error(f"not promoting {r.percentage:g} % -> {target:g} %:")
            for reason in blocked:
                con.line(f"  - {reason}")
            return EXIT_FAILED
        if blocked:
            con.warning("criteria not met; promoting anyway (--force): " + "; ".join(blocked))
        else:
            con.success("promotion criteria hold on live figures")
    return _apply_edit(
        args,
        _command_line(args),
        ("rollout", "percentage"),
        target,
        config=config,
        forced=bool(args.force),
        live=live,
        live_checked=True,
    )


def cmd_rollback(args: argparse.Namespace) -> int:
    config = load_config(args.config_path)
    r = config.rollout
    target = previous_stage(r.stages, r.percentage)
    if target is None:
        Console().info(f"already at {r.percentage:g} %, the first stage: nothing to roll back")
        return EXIT_OK
    return _apply_edit(args, _command_line(args), ("rollout", "percentage"), target, config=config)


def cmd_emergency(args: argparse.Namespace) -> int:
    config = load_config(args.config_path)
    return _apply_edit(
        args, _command_line(args), ("rollout", "emergency"), not args.off, config=config
    )


def _command_line(args: argparse.Namespace) -> str:
    parts = ["rollout", args.command]
    for name in ("percentage", "n"):
        if hasattr(args, name):
            parts.append(f"{getattr(args, name):g}")
    if getattr(args, "feature", None):
        parts += ["--feature", args.feature]
    if getattr(args, "off", False):
        parts.append("--off")
    if getattr(args, "force", False):
        parts.append("--force")
    return " ".join(parts)
