"""Who a change moves, in the terminal: `--dry-run` on the editing commands and
`rollout check --preview` (SPEC 14).

The running proxy answers `POST /-/preview` with the bucket rule's figures against what
it serves and its recent activity; when none answers, the bucket rule alone compares the
proposed file with the current one, and the output says so.
"""

from __future__ import annotations

import argparse

from proxy.config.load import load_config
from proxy.config.values import Config
from proxy.control.client import LiveError, admin_url, fetch_preview
from proxy.control.console import EXIT_OK, Console
from proxy.preview import file_preview, query_of
from proxy.status import FeaturePreview, MovedActivity, PreviewDocument


def preview(current: Config, proposed: Config, admin: str | None) -> tuple[PreviewDocument, str]:
    """The proxy's preview of `proposed`, or the file-only one; and where it came from
    (the admin URL, or why it could not be reached)."""
    url = admin_url(current, admin)
    try:
        return fetch_preview(url, current.admin.token, query_of(proposed)), url
    except LiveError as exc:
        return file_preview(current, proposed), str(exc)


def show_preview(con: Console, doc: PreviewDocument, where: str) -> None:
    if doc["source"] == "proxy":
        minutes = doc["window_seconds"] // 60
        con.heading(
            f"Who moves (against what the proxy at {where} serves, generation "
            f"{doc['generation']}; its activity in the last {minutes} min)"
        )
    else:
        con.warning(f"proxy not reachable ({where}): no session figures")
        con.heading("Who moves (bucket rule only, against the file as it is now)")
    for warning in doc["warnings"]:
        con.warning(warning)
    if not doc["changed"]:
        con.line("  nobody: the change routes every session as now")
        return
    for feature in doc["features"]:
        _show_feature(con, feature)


def _show_feature(con: Console, f: FeaturePreview) -> None:
    expected = " (expected, not exact)" if f["expected"] else ""
    before, after = _held(f["before"], f["before_held"]), _held(f["after"], f["after_held"])
    con.line(
        f"  {f['feature']}  {before} -> {after}: "
        f"{f['share']:.2f} % of buckets change side{expected}"
    )
    for side, share, moved in (
        ("signal", f["to_signal_share"], f["to_signal"]),
        ("legacy", f["to_legacy_share"], f["to_legacy"]),
    ):
        if share == 0 and (moved is None or moved["requests"] == 0):
            continue
        con.line(f"    to {side}  {share:.2f} % of buckets{_activity(moved)}")
    if f["test_sessions_to_signal"] or f["test_sessions_to_legacy"]:
        con.line(
            f"    test sessions  {f['test_sessions_to_signal']} to signal, "
            f"{f['test_sessions_to_legacy']} to legacy"
        )


def _held(pct: float, held: str | None) -> str:
    return f"{pct:g} % ({held})" if held else f"{pct:g} %"


def _activity(moved: MovedActivity | None) -> str:
    if moved is None:
        return ""
    floor = "at least " if moved["saturated"] else ""
    return (
        f", {floor}~{moved['sessions']:.0f} recent sessions with {moved['requests']} "
        f"requests ({moved['request_share']:.2f} % of recent requests)"
    )


def cmd_check_preview(args: argparse.Namespace) -> int:
    """`rollout check --preview`: the file (valid, or `check` said why not) against what
    the running proxy serves. Without a proxy there is nothing to compare with."""
    con = Console()
    proposed = load_config(args.config_path)
    doc, where = preview(proposed, proposed, args.admin)
    con.line()
    if doc["source"] != "proxy":
        con.warning(f"proxy not reachable ({where}): nothing to compare the file with")
        return EXIT_OK
    show_preview(con, doc, where)
    return EXIT_OK
