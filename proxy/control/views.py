"""The read-only commands: check, explain, status, test, report, diff (SPEC 10)."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Mapping

from proxy.config.certificates import (
    WARN_DAYS,
    Certificate,
    CertificateError,
    days_left,
    expiry_status,
    read_certificates,
    tls_files,
)
from proxy.config.load import load_config
from proxy.config.values import Config
from proxy.control.client import LiveError, admin_url, fetch_diffs, fetch_metrics, live_status
from proxy.control.console import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Console
from proxy.control.figures import (
    SIDES,
    SideFigures,
    from_admin,
    from_prometheus,
    match_rate,
    shadow_counts,
    shadow_from_prometheus,
)
from proxy.control.preview_view import cmd_check_preview
from proxy.control.progress_view import cmd_report_markdown
from proxy.control.smoke import Check, PeerCertificate, peer_certificates, proxy_url, run_smoke
from proxy.rollout.routing import choose_upstream, threshold
from proxy.rollout.stages import (
    Criterion,
    Figures,
    Recommendation,
    Verdict,
    describe_stage,
    judge,
    next_stage,
)
from proxy.status import WindowFigures


def cmd_check(args: argparse.Namespace) -> int:
    path = args.config_path
    config = load_config(path)
    r = config.rollout
    stage = _stage_of(config)
    print(f"{path}: valid")
    print(
        f"  upstreams   signal {config.upstreams.signal.url}, legacy {config.upstreams.legacy.url}"
    )
    print(
        f"  listen      {config.listen.host}:{config.listen.port}  "
        f"admin {config.admin.host}:{config.admin.port}"
        f"{' (token set)' if config.admin.token else ''}"
    )
    print(
        f"  rollout     {r.percentage:g} % ({stage}), seed {r.seed!r}"
        f"{', EMERGENCY: all to legacy' if r.emergency else ''}"
    )
    for feature in r.features:
        pct = r.percentage if feature.percentage is None else feature.percentage
        print(f"  feature     {feature.name}: {pct:g} % on {', '.join(feature.paths)}")
    print(f"  test ids    {len(r.test_sessions)}")
    fb = config.fallback
    print(
        f"  fallback    {'on' if fb.enabled else 'off'}, statuses "
        f"{', '.join(map(str, sorted(fb.statuses)))}, replay bodies up to {fb.max_body_bytes} B"
    )
    g = config.guard
    print(
        f"  guard       {'on' if g.enabled else 'off'}: roll back when error rate > "
        f"{g.max_error_rate:.1%} or p95 > {g.max_p95_ms:g} ms over {g.window_seconds} s "
        f"(min {g.min_requests} requests)"
    )
    p = config.promotion
    print(
        f"  promotion   error rate < {p.max_error_rate:.1%}, p95 < {p.max_p95_ms:g} ms, "
        f"min {p.min_requests} requests"
    )
    code = _print_certificates(config, Console(), time.time())
    if args.preview:
        return max(code, cmd_check_preview(args))
    return code


def _print_certificates(config: Config, con: Console, now: float) -> int:
    """Each TLS file's certificates; a warning within `WARN_DAYS` of expiry, an error
    (exit 1) once expired or unreadable."""
    failed = False
    for key, path, bundle in tls_files(config):
        con.line(f"  {key} {path}")
        try:
            certificates = read_certificates(path, bundle=bundle)
        except CertificateError as exc:
            con.error(f"{key}: {exc}")
            failed = True
            continue
        for cert in certificates:
            left = cert.seconds_left(now)
            con.line(f"      subject {cert.subject}")
            con.line(f"      issuer  {cert.issuer}")
            con.line(f"      expires {cert.expires()} ({_days(left)})")
            status = expiry_status(left)
            if status == "expiring":
                days = days_left(left)
                con.warning(
                    f"{key}: {_who(cert)} expires in {days} day{'' if days == 1 else 's'}, "
                    f"on {cert.expires()}, within {WARN_DAYS} days ({path})"
                )
            elif status == "expired":
                con.error(f"{key}: {_who(cert)} has expired: {cert.expires()} ({path})")
                failed = True
    return EXIT_FAILED if failed else EXIT_OK


def _days(seconds_left: float) -> str:
    days = days_left(seconds_left)
    if days < 0:
        return "expired"
    return f"{days} day{'' if days == 1 else 's'} left"


def _who(cert: Certificate) -> str:
    return f"certificate {cert.subject!r}"


def _stage_of(config: Config) -> str:
    stages = config.rollout.stages
    pct = config.rollout.percentage
    if pct in stages:
        return f"stage {stages.index(pct)} of {len(stages) - 1}"
    return "between stages"


def cmd_explain(args: argparse.Namespace) -> int:
    config = load_config(args.config_path)
    decision = choose_upstream(config.rollout, args.session_id, args.path)
    pct = config.feature_percentages()[decision.feature]
    result = {
        "session_id": args.session_id,
        "path": args.path,
        "feature": decision.feature,
        "percentage": pct,
        "threshold": threshold(pct),
        "bucket": decision.bucket,
        "upstream": decision.side.value,
        "reason": decision.reason.value,
    }
    if args.json:
        print(json.dumps(result))
        return EXIT_OK
    reason = {
        "emergency": "rollout.emergency is true: everything goes to legacy",
        "test_session": "listed in rollout.test_sessions",
        "bucket": (
            f"bucket {decision.bucket} {'<' if decision.side.value == 'signal' else '>='} "
            f"{threshold(pct)} (= {pct:g} % of 10000)"
        ),
    }[decision.reason.value]
    print(f"session   {args.session_id}")
    print(f"feature   {decision.feature} ({pct:g} %)")
    if decision.bucket is not None:
        print(f"bucket    {decision.bucket} of 10000")
    print(f"upstream  {decision.side.value}")
    print(f"reason    {reason}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    path = args.config_path
    config = load_config(path)
    live, where = live_status(config, args.admin)
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
    upgraded = {s: live["upstreams"][s].get("upgraded", 0) for s in SIDES}
    if any(upgraded.values()):
        con.line("  websockets   " + ", ".join(f"{s} {n} open" for s, n in upgraded.items()))
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


def cmd_test(args: argparse.Namespace) -> int:
    config = load_config(args.config_path)
    url = proxy_url(config, args.url)
    checks, peers = asyncio.run(_smoke_and_certificates(config, url))
    now = time.time()
    failed = [c for c in checks if not c.ok]
    bad_peers = [p for p in peers if p.status(now) in ("error", "expired")]
    if args.json:
        doc = {
            "ok": not failed and not bad_peers,
            "checks": [c.as_dict() for c in checks],
            "certificates": [p.as_dict(now) for p in peers],
        }
        print(json.dumps(doc, indent=2))
        return EXIT_FAILED if failed or bad_peers else EXIT_OK
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
    _print_peer_certificates(con, peers, now)
    if failed or bad_peers:
        for c in failed:
            con.error(f"{c.target} {c.path}: {c.error or f'HTTP {c.status}'}")
        return EXIT_FAILED
    con.success(f"all {len(checks)} checks passed")
    return EXIT_OK


async def _smoke_and_certificates(
    config: Config, url: str
) -> tuple[list[Check], list[PeerCertificate]]:
    checks, peers = await asyncio.gather(run_smoke(config, url), peer_certificates(config))
    return checks, peers


def _print_peer_certificates(con: Console, peers: list[PeerCertificate], now: float) -> None:
    for peer in peers:
        where = f"{peer.upstream} certificate ({peer.server_name})"
        cert = peer.certificate
        if cert is None:
            con.error(f"{where}: {peer.error}")
            continue
        left = cert.seconds_left(now)
        text = f"{where}: {cert.subject}, issuer {cert.issuer}, expires {cert.expires()}"
        status = peer.status(now)
        if status == "ok":
            con.info(f"{text} ({_days(left)})")
        elif status == "expiring":
            con.warning(f"{text}: {_days(left)}, within {WARN_DAYS} days")
        else:
            con.error(f"{text}: expired")


def cmd_report(args: argparse.Namespace) -> int:
    con = Console()
    if args.markdown:
        if args.json:
            con.error("--markdown and --json are two formats of a different report: pick one")
            return EXIT_USAGE
        return cmd_report_markdown(args)
    if args.since is not None or args.no_smoke:
        con.error("--since and --no-smoke belong to the progress report: add --markdown")
        return EXIT_USAGE
    config = load_config(args.config_path)
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


def cmd_diff(args: argparse.Namespace) -> int:
    """Shadow comparison results: match rate per feature and the kept mismatches."""
    config = load_config(args.config_path)
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
