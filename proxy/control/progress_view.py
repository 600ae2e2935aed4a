"""`rollout report --markdown`: gathers what `progress.build_report` needs and prints it.

Each part is read on its own, so one that cannot be read (the proxy down, Prometheus
unreachable, an unreadable autopilot state file) becomes a sentence in the report, never
the end of it: the history alone still gives the changes, the stages and the decisions.

Exit code: 1 when the smoke test failed or the live figures breach a guard trigger (as
`rollout test` and `rollout report` exit), else 0; the report is printed in full either way.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from proxy.config.load import load_config
from proxy.config.values import Config
from proxy.control.client import LiveError, admin_url, fetch_metrics
from proxy.control.console import EXIT_FAILED, EXIT_OK, Console
from proxy.control.figures import (
    from_admin,
    from_prometheus,
    promql_queries,
    shadow_from_prometheus,
)
from proxy.control.progress import build_report
from proxy.control.progress_inputs import (
    DEFAULT_SINCE,
    GuardNow,
    Live,
    PilotNow,
    ReportInputs,
    Smoke,
    parse_duration,
)
from proxy.control.prometheus import query, shown, value_of
from proxy.control.smoke import proxy_url, run_smoke
from proxy.records.history import HistoryEntry, history_path, read_entries
from proxy.records.pilot_document import controller_document, operator_of, pilot_state
from proxy.records.pilot_state import StateFileError, lock_holder, read_state
from proxy.rollout.pilot import duration_text, next_action
from proxy.rollout.stages import Figures, Recommendation, judge


def cmd_report_markdown(args: argparse.Namespace) -> int:
    config = load_config(args.config_path)
    since = args.since or DEFAULT_SINCE
    seconds = parse_duration(since)  # checked by the parser already; here for direct calls
    now = time.time()
    entries, skipped = _history(args.config_path)
    live, live_error = _live(config, args, since)
    smoke = _smoke(config, skip=bool(args.no_smoke))
    inputs = ReportInputs(
        config=config,
        config_path=str(args.config_path),
        entries=entries,
        since=since,
        start=now - seconds,
        now=now,
        live=live,
        live_error=live_error,
        smoke=smoke,
        pilot=_pilot(args.config_path, config, now),
        skipped_lines=tuple(skipped),
    )
    sys.stdout.write(build_report(inputs))
    failed = any(not c.ok for c in smoke.checks)
    if live is not None:
        s = live.figures["signal"]
        verdict = judge(Figures(s.requests, s.error_rate, s.p95_ms), config.promotion, config.guard)
        failed = failed or verdict.recommendation is Recommendation.ROLL_BACK
    return EXIT_FAILED if failed else EXIT_OK


def _history(config_path: Path) -> tuple[list[HistoryEntry], list[int]]:
    if not history_path(config_path).exists():
        return [], []
    try:
        return read_entries(config_path)
    except OSError as exc:
        Console(out=sys.stderr).warning(f"history not readable: {exc}")
        return [], []


def _live(config: Config, args: argparse.Namespace, since: str) -> tuple[Live | None, str | None]:
    try:
        if args.prometheus:
            return _from_prometheus(args.prometheus, args.window, since), None
        return _from_admin(admin_url(config, args.admin), config.admin.token), None
    except LiveError as exc:
        return None, str(exc)


def _from_admin(url: str, token: str | None) -> Live:
    figures, status, shadow = from_admin(url, token)
    guard = status["guard"]
    started = f"since the proxy started {duration_text(status['uptime_seconds'])} ago"
    return Live(
        source=f"admin {url}, this replica, last {guard['window_seconds']} s",
        figures=figures,
        # What the proxy has loaded, as `rollout promote` compares (effective is 0 while
        # the guard holds, which is a blocker of its own).
        served=status["percentages"].get("default"),
        guard=GuardNow(
            enabled=guard["enabled"],
            tripped=guard["tripped"],
            reason=guard["reason"],
            tripped_at=guard["tripped_at"],
        ),
        fallbacks=figures["signal"].fallbacks,
        fallback_reasons=_fallback_reasons(fetch_metrics(url, token)),
        shadow=shadow,
        counted=f"{started}, this replica",
    )


def _fallback_reasons(metrics: str) -> dict[str, int]:
    """`rollout_fallbacks_total` by reason, summed over features."""
    out: dict[str, int] = {}
    for family in text_string_to_metric_families(metrics):
        if family.name != "rollout_fallbacks":
            continue
        for sample in family.samples:
            if sample.name == "rollout_fallbacks_total":
                reason = sample.labels.get("reason", "?")
                out[reason] = out.get(reason, 0) + int(sample.value)
    return out


def _from_prometheus(prometheus: str, window: str, since: str) -> Live:
    """The current stage over `--window`; fallbacks, shadow and guard changes over the
    report's range."""
    figures = from_prometheus(prometheus, window)
    fallback_rows = query(prometheus, promql_queries(since)["fallbacks"])
    tripped = query(prometheus, "sum(rollout_guard_tripped)")
    changes = query(prometheus, f"sum(changes(rollout_guard_tripped[{since}]))")
    replicas = round(value_of(tripped[0])) if tripped else 0
    return Live(
        source=f"Prometheus {shown(prometheus)}, all replicas, last {window}",
        figures=figures,
        served=None,
        guard=GuardNow(
            enabled=None,
            tripped=replicas > 0,
            reason=f"rollout_guard_tripped is 1 on {replicas} replica(s)" if replicas else None,
            replicas_tripped=replicas,
            changes=round(value_of(changes[0])) if changes else 0,
        ),
        fallbacks=round(value_of(fallback_rows[0])) if fallback_rows else 0,
        fallback_reasons={},
        shadow=shadow_from_prometheus(prometheus, since),
        counted=f"over the last {since}, all replicas",
    )


def _smoke(config: Config, *, skip: bool) -> Smoke:
    if skip:
        return Smoke(not_run="--no-smoke")
    url = proxy_url(config, None)
    checks = tuple(asyncio.run(run_smoke(config, url)))
    through = [c for c in checks if c.target == "proxy"]
    if through and all(c.status is None for c in through):
        # Nothing answered on the public port: the proxy is down, not failing a check.
        return Smoke(not_run=f"the proxy at {url} is unreachable ({through[0].error})")
    return Smoke(checks=checks)


def _pilot(config_path: Path, config: Config, now: float) -> PilotNow:
    """What `rollout autopilot status` says it does next."""
    enabled = config.autopilot.enabled
    holder = lock_holder(config_path)
    running = None
    if holder is not None:
        running = f"pid {holder.get('pid') or '?'} on {holder.get('host') or '?'}"
    try:
        saved = read_state(config_path)
    except StateFileError as exc:
        return PilotNow(enabled, f"unknown: {exc}", running)
    doc = controller_document(saved["controller"])
    if doc is None:
        return PilotNow(enabled, None, running)
    state = pilot_state(doc["state"])
    r = config.rollout
    if state.percentage != r.percentage:
        action = (
            f"notice the file's change to {r.percentage:g} % at its next analysis and bake again"
        )
        return PilotNow(enabled, action, running)
    pause = saved["operator"]["pause"]
    if pause is not None and state.pause is None:
        # Asked for since the controller's last save: it stops at its next analysis.
        why = f" ({pause['reason']})" if pause["reason"] else ""
        action = (
            f"stop at its next analysis: paused by {pause['user']} at {pause['time']}{why}; "
            "waits for `rollout resume`"
        )
        return PilotNow(enabled, action, running)
    operator = operator_of(saved["operator"])
    return PilotNow(enabled, next_action(state, config.autopilot, r.stages, operator, now), running)
