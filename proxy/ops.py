"""The operators' commands: status, set, stage, promote, rollback, emergency, test, report.

Each edit is validated in full before writing, keeps the file's comments and layout
(`proxy.edit`), is written atomically, and leaves one line in the history file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from proxy.config.load import load_config, parse_config, resolve_config_path
from proxy.config.values import Config, format_value
from proxy.console import Console
from proxy.edit import EditError, set_value, write_atomically
from proxy.errors import ConfigError
from proxy.history import record
from proxy.live import LiveError, admin_url, fetch_diffs, fetch_metrics, fetch_status
from proxy.report import (
    SIDES,
    SideFigures,
    from_admin,
    from_prometheus,
    match_rate,
    shadow_counts,
    shadow_from_prometheus,
)
from proxy.rollout.stages import (
    Criterion,
    Figures,
    Recommendation,
    Verdict,
    describe_stage,
    judge,
    next_stage,
    previous_stage,
    promotion_blockers,
)
from proxy.smoke import proxy_url, run_smoke
from proxy.status import StatusDocument, WindowFigures

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _path(args: argparse.Namespace) -> Path:
    return resolve_config_path(getattr(args, "config", None))


def _live(config: Config, args: argparse.Namespace) -> StatusDocument | None:
    try:
        return fetch_status(admin_url(config, getattr(args, "admin", None)), config.admin.token)
    except LiveError:
        return None


def _live_or_reason(config: Config, args: argparse.Namespace) -> tuple[StatusDocument | None, str]:
    url = admin_url(config, getattr(args, "admin", None))
    try:
        return fetch_status(url, config.admin.token), url
    except LiveError as exc:
        return None, str(exc)


def _signal_figures(live: StatusDocument) -> Figures:
    w = live["upstreams"]["signal"]
    return Figures(w["requests"], w["error_rate"], w["p95_ms"])


def _live_summary(live: StatusDocument | None) -> dict[str, Any] | None:
    """What the history keeps of the live state: the evidence behind a move."""
    if live is None:
        return None
    return {
        "generation": live["config"]["generation"],
        "guard_tripped": live["guard"]["tripped"],
        "upstreams": live["upstreams"],
    }


# --- status ----------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    path = _path(args)
    config = load_config(path)
    live, where = _live_or_reason(config, args)
    r = config.rollout
    doc = {
        "config": str(path),
        "percentage": r.percentage,
        "stage": describe_stage(r.stages, r.percentage),
        "percentages": config.feature_percentages(),
        "emergency": r.emergency,
        "test_sessions": sorted(r.test_sessions),
        "live": live,
        "live_error": None if live else where,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    con = Console()
    con.heading(f"Configured ({path})")
    con.line(
        f"  rollout      {r.percentage:g} % to signal, {describe_stage(r.stages, r.percentage)}"
    )
    for name, pct in config.feature_percentages().items():
        if name != "default":
            con.line(f"  feature      {name}: {pct:g} %")
    con.line(f"  emergency    {'ON: everything to legacy' if r.emergency else 'off'}")
    con.line(f"  test ids     {', '.join(sorted(r.test_sessions)) or '(none)'}")
    con.line()
    if live is None:
        con.warning(f"proxy not reachable ({where}); showing the file's state only")
        return EXIT_OK
    con.heading(f"Live ({where})")
    last = live["config"]["last_reload"]
    guard = live["guard"]
    con.line(
        f"  generation   {live['config']['generation']}, last reload "
        f"{'ok' if last['ok'] else 'FAILED: ' + str(last['error'])}"
    )
    effective = ", ".join(f"{k} {v:g} %" for k, v in live["effective_percentages"].items())
    con.line(f"  effective    {effective}")
    if guard["tripped"]:
        con.error(f"guard TRIPPED: {guard['reason']}")
    else:
        con.line(f"  guard        armed ({'on' if guard['enabled'] else 'off'})")
    _figures_table(con, {s: live["upstreams"][s] for s in SIDES}, fallbacks=None)
    return EXIT_OK


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _figures_table(
    con: Console, windows: Mapping[str, WindowFigures], fallbacks: dict[str, int] | None
) -> None:
    header = ["upstream", "requests", "errors", "error rate", "p50 ms", "p95 ms", "p99 ms"]
    if fallbacks is not None:
        header.append("fallbacks")
    rows = []
    for side in SIDES:
        w = windows[side]
        row = [
            side,
            str(w["requests"]),
            str(w["errors"]),
            f"{w['error_rate'] * 100:.2f} %",
            _fmt_ms(w["p50_ms"]),
            _fmt_ms(w["p95_ms"]),
            _fmt_ms(w["p99_ms"]),
        ]
        if fallbacks is not None:
            row.append(str(fallbacks[side]))
        rows.append(row)
    con.table(header, rows)


# --- edits -----------------------------------------------------------------------------


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
    path = _path(args)
    con = Console()
    before_text = path.read_text(encoding="utf-8")
    before = _plain(_lookup(config, key))
    dotted = ".".join(key)
    if before == value:
        con.info(f"{dotted} is already {format_value(value)}: nothing to change")
        return EXIT_OK
    try:
        after_text = set_value(before_text, key, value)
        parse_config(after_text, str(path))
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
        live = _live(config, args)
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


def _lookup(config: Config, key: tuple[str, ...]) -> Any:
    if key[:2] == ("rollout", "features"):
        feature = next(f for f in config.rollout.features if f.name == key[2])
        return feature.percentage
    value: Any = config
    for part in key:
        value = getattr(value, part)
    return value


def cmd_set(args: argparse.Namespace) -> int:
    config = load_config(_path(args))
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
    config = load_config(_path(args))
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
    config = load_config(_path(args))
    con = Console()
    r = config.rollout
    target = next_stage(r.stages, r.percentage)
    if target is None:
        con.info(f"already at the last stage ({r.percentage:g} %): nothing to promote")
        return EXIT_OK
    live, where = _live_or_reason(config, args)
    if live is None:
        if not args.force:
            con.error(f"cannot judge the promotion criteria: proxy not reachable ({where})")
            con.line("  (--force promotes without live figures; the history records it)")
            return EXIT_FAILED
        con.warning(f"proxy not reachable ({where}); promoting anyway (--force)")
    else:
        verdict = judge(_signal_figures(live), config.promotion, config.guard)
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
    config = load_config(_path(args))
    r = config.rollout
    target = previous_stage(r.stages, r.percentage)
    if target is None:
        Console().info(f"already at {r.percentage:g} %, the first stage: nothing to roll back")
        return EXIT_OK
    return _apply_edit(args, _command_line(args), ("rollout", "percentage"), target, config=config)


def cmd_emergency(args: argparse.Namespace) -> int:
    config = load_config(_path(args))
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


# --- test ------------------------------------------------------------------------------


def cmd_test(args: argparse.Namespace) -> int:
    config = load_config(_path(args))
    url = proxy_url(config, args.url)
    checks = asyncio.run(run_smoke(config, url))
    failed = [c for c in checks if not c.ok]
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [c.as_dict() for c in checks]}, indent=2))
        return EXIT_FAILED if failed else EXIT_OK
    con = Console()
    rows = [
        [
            c.target,
            c.path,
            str(c.status) if c.status is not None else "-",
            f"{c.latency_ms:.1f}",
            c.served_by or "-",
            "ok" if c.ok else "FAILED",
        ]
        for c in checks
    ]
    con.table(["target", "path", "status", "ms", "served by", "result"], rows)
    if failed:
        for c in failed:
            con.error(f"{c.target} {c.path}: {c.error or f'HTTP {c.status}'}")
        return EXIT_FAILED
    con.success(f"all {len(checks)} checks passed")
    return EXIT_OK


# --- report ----------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    config = load_config(_path(args))
    con = Console()
    try:
        if args.prometheus:
            figures = from_prometheus(args.prometheus, args.window)
            shadow = shadow_from_prometheus(args.prometheus, args.window)
            source = f"Prometheus {args.prometheus}, all replicas, last {args.window}"
        else:
            url = admin_url(config, args.admin)
            figures, _, shadow = from_admin(url, config.admin.token)
            source = f"admin {url}, this replica, last {config.guard.window_seconds} s"
    except LiveError as exc:
        con.error(f"no live figures: {exc}")
        return EXIT_USAGE
    signal = figures["signal"]
    verdict = judge(
        Figures(signal.requests, signal.error_rate, signal.p95_ms), config.promotion, config.guard
    )
    if args.json:
        print(
            json.dumps(
                {
                    "source": source,
                    "upstreams": {s: figures[s].as_dict() for s in SIDES},
                    "promotion": [_criterion(c) for c in verdict.promotion],
                    "rollback": [_criterion(c) for c in verdict.rollback],
                    "recommendation": verdict.recommendation.value,
                    "shadow": {
                        f: {**c, "match_rate": match_rate(c)} for f, c in sorted(shadow.items())
                    },
                },
                indent=2,
            )
        )
    else:
        _print_report(con, config, source, figures, verdict)
        _print_shadow(con, shadow)
    return EXIT_OK if verdict.recommendation is not Recommendation.ROLL_BACK else EXIT_FAILED


def _print_shadow(con: Console, shadow: dict[str, dict[str, int]]) -> None:
    compared = {f: c for f, c in shadow.items() if match_rate(c) is not None}
    if not compared:
        return
    con.line()
    con.heading("Shadow comparison (signal's answers vs legacy's; `rollout diff` for details)")
    for feature, counts in sorted(compared.items()):
        rate = match_rate(counts) or 0.0
        total = counts.get("match", 0) + counts.get("mismatch", 0)
        con.line(f"  {feature}: {rate * 100:.1f} % match over {total} compared requests")


def _criterion(c: Criterion) -> dict[str, str]:
    return {"criterion": c.name, "target": c.target, "actual": c.actual, "status": c.status.value}


def _print_report(
    con: Console, config: Config, source: str, figures: dict[str, SideFigures], verdict: Verdict
) -> None:
    r = config.rollout
    con.heading(f"Signal vs legacy ({source})")
    con.line(f"rollout {r.percentage:g} %, {describe_stage(r.stages, r.percentage)}")
    con.line()
    _figures_table(
        con,
        {s: figures[s].as_dict() for s in SIDES},
        fallbacks={s: figures[s].fallbacks for s in SIDES},
    )
    con.line()
    con.heading("Verdict")
    rows = [[c.name, c.target, c.actual, c.status.value] for c in verdict.promotion]
    rows += [[c.name, c.target, c.actual, c.status.value] for c in verdict.rollback]
    con.table(["criterion", "target", "actual", "status"], rows)
    con.line()
    rec = verdict.recommendation
    if rec is Recommendation.ROLL_BACK:
        con.error("recommendation: ROLL BACK (`rollout rollback`)")
    elif rec is Recommendation.PROMOTE:
        target = next_stage(r.stages, r.percentage)
        con.success(
            f"recommendation: promote to {target:g} % (`rollout promote`)"
            if target is not None
            else "recommendation: at the last stage; criteria hold"
        )
    else:
        why = (
            f"{verdict.missing_requests} more signal requests needed"
            if verdict.missing_requests
            else "criteria not met"
        )
        con.warning(f"recommendation: hold ({why})")


# --- diff ------------------------------------------------------------------------------


def cmd_diff(args: argparse.Namespace) -> int:
    """Shadow comparison results: match rate per feature and the kept mismatches."""
    config = load_config(_path(args))
    url = admin_url(config, args.admin)
    try:
        diffs = fetch_diffs(url, config.admin.token)["diffs"]
        counts = shadow_counts(fetch_metrics(url, config.admin.token))
    except LiveError as exc:
        Console().error(f"no shadow results: {exc}")
        return EXIT_USAGE
    rates = {feature: match_rate(c) for feature, c in counts.items()}
    if args.json:
        print(
            json.dumps(
                {
                    "enabled": config.shadow.enabled,
                    "features": {f: {**counts[f], "match_rate": rates[f]} for f in sorted(counts)},
                    "diffs": diffs[: args.limit],
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return EXIT_OK
    con = Console()
    if not config.shadow.enabled:
        con.warning("shadow.enabled is false in the config: no new comparisons are made")
    rows = []
    for feature in sorted(counts):
        c = counts[feature]
        rate = rates[feature]
        rows.append(
            [
                feature,
                str(c.get("match", 0)),
                str(c.get("mismatch", 0)),
                str(c.get("error", 0)),
                str(c.get("dropped", 0)),
                "-" if rate is None else f"{rate * 100:.1f} %",
            ]
        )
    con.heading(f"Shadow comparison (admin {url})")
    con.table(["feature", "match", "mismatch", "error", "dropped", "match rate"], rows)
    con.line()
    if not diffs:
        con.success("no mismatches kept")
        return EXIT_OK
    con.heading(f"Most recent mismatches ({min(len(diffs), args.limit)} of {len(diffs)} kept)")
    for diff in diffs[: args.limit]:
        signal_status = diff["signal_status"] if diff["signal_status"] is not None else "-"
        con.line(
            f"{diff['method']} {diff['path']}  [{diff['feature']}]  "
            f"legacy {diff['legacy_status']}  signal {signal_status}"
        )
        for field in diff["fields"]:
            con.line(f"    {field['path']}: legacy {field['legacy']}  signal {field['signal']}")
    return EXIT_OK
